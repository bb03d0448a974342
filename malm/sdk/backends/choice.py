"""The choice of an image-encoder backend and variant for a bundle on this device, and building it.

Order of preference for `backend="auto"`: ONNX Runtime (with its TensorRT / CUDA / CoreML execution
providers when present), then a native TensorRT engine, then CoreML. ONNX Runtime comes as the extra
that fits the device (`malm[cpu]`, `malm[gpu]`, JetPack's wheel); without one, "auto" says which to install.
"""

from __future__ import annotations

from malm.errors import BundleError, MalmError
from malm.sdk.backends.base import ImageBackend
from malm.sdk.backends.ort import (
    COREML,
    CUDA,
    TENSORRT,
    OrtImageBackend,
    available_providers,
    select_providers,
)
from malm.sdk.backends.registry import BACKEND_CHOICES, BACKENDS, IMAGE_ENCODERS, VARIANTS
from malm.sdk.bundle_loader import Bundle

# Why `variant="auto"` prefers what it does, per first execution provider (shown by `malm doctor`).
_WHY = {
    TENSORRT: "TensorRT's explicit int8 needs symmetric (zero-point 0) QDQ: int8; else fp32 built as fp16",
    CUDA: "the CUDA provider runs QDQ int8 models slowly: fp32",
    COREML: "the CoreML provider runs QDQ int8 models slowly: fp32",
}
_WHY_CPU = "CPU provider: int8_cpu (uint8 activations, the u8×s8 kernels ONNX Runtime's CPU path is fast with)"


def auto_order(first_provider: str) -> tuple[str, ...]:
    """Which image encoder `variant="auto"` takes, best first, for the session's first execution provider.

    CPU: `int8_cpu` (uint8 activations: the U8S8 kernels x86 ONNX Runtime is fast with), then the symmetric
    `int8`. TensorRT EP: the symmetric `int8` (explicit quantization needs zero points 0), else fp32 (built as
    fp16). CUDA / CoreML EPs run QDQ models slowly: fp32.
    """
    if first_provider == TENSORRT:
        return ("int8", "fp32", "int8_cpu")
    if first_provider in (CUDA, COREML):
        return ("fp32", "int8", "int8_cpu")
    return ("int8_cpu", "int8", "fp32")


def variants_present(bundle: Bundle) -> list[str]:
    return [v for v in IMAGE_ENCODERS if bundle.encoder(IMAGE_ENCODERS[v])]


def explain_variant(bundle: Bundle, variant: str, first_provider: str) -> tuple[str, str]:
    """(the image-encoder variant to load, why) for a requested `variant` on `first_provider`."""
    present = variants_present(bundle)
    if not present:
        raise BundleError(f"bundle {bundle.root}: has no ONNX image encoder "
                          f"({', '.join(IMAGE_ENCODERS.values())})")
    if variant == "auto":
        order = auto_order(first_provider)
        chosen = next(v for v in order if v in present)
        why = _WHY.get(first_provider, _WHY_CPU)
        missing = order[:order.index(chosen)]
        if missing:
            why += f"; the bundle has no {' / '.join(missing)}, so {chosen}"
        return chosen, f"auto on {first_provider}: {why}"
    if variant not in present:
        raise BundleError(f"bundle {bundle.root}: has no {variant} image encoder (has: {', '.join(present)})")
    return variant, f"asked for {variant}"


def choose_variant(bundle: Bundle, variant: str, first_provider: str) -> str:
    return explain_variant(bundle, variant, first_provider)[0]


def candidates(bundle: Bundle, backend: str = "auto", variant: str = "auto") -> list[str]:
    """The image encoders to try, best first: the auto order from the chosen one on (the self-check falls
    back along it), or just the variant asked for."""
    if backend not in ("auto", "onnxruntime"):
        return [variant]
    first = select_providers(available_providers())[0]
    chosen = choose_variant(bundle, variant, first)
    if variant != "auto":
        return [chosen]
    present = [v for v in auto_order(first) if bundle.encoder(IMAGE_ENCODERS[v])]
    return present[present.index(chosen):]


def encoder_file(bundle: Bundle, backend: str, variant: str) -> str | None:
    """The bundle file a backend runs for `variant` (what its self-check result is remembered for)."""
    row = BACKENDS.get(backend)
    name = (row.encoder if row else None) or IMAGE_ENCODERS.get(variant, "")
    entry = bundle.encoder(name)
    return entry.file if entry else None


def targets(bundle: Bundle, backend: str = "auto", variant: str = "auto") -> list[tuple[str, str, str, str | None]]:
    """(variant, backend name, device, encoder file) of each image encoder to try, best first, known without
    building a session: the self-check recalls a result remembered for them before paying for one."""
    if backend in ("auto", "onnxruntime"):
        device = select_providers(available_providers())[0]
        return [(v, "onnxruntime", device, encoder_file(bundle, "onnxruntime", v))
                for v in candidates(bundle, backend, variant)]
    return [(variant, backend, backend, encoder_file(bundle, backend, variant))]


def _image_file(bundle: Bundle, variant: str) -> str:
    entry = bundle.encoder(IMAGE_ENCODERS[variant])
    return str(entry.file if entry else None)  # choose_variant picks a variant the bundle has


def create_onnxruntime(bundle: Bundle, variant: str, threads: int | None) -> ImageBackend:
    providers = select_providers(available_providers())
    chosen, why = explain_variant(bundle, variant, providers[0])
    rel = _image_file(bundle, chosen)
    ort_backend = OrtImageBackend(bundle.path(rel), chosen, providers, threads, bundle.read_bytes(rel))
    if ort_backend.device != providers[0]:
        # ONNX Runtime falls back silently when a provider fails to start (no CUDA libraries, a TensorRT
        # mismatch): the session's own list says what runs. "auto" then takes that provider's variant.
        ort_backend.requested_device = providers[0]
        actual = choose_variant(bundle, variant, ort_backend.device)
        if actual != chosen:
            chosen, rel = actual, _image_file(bundle, actual)
            _, why = explain_variant(bundle, variant, ort_backend.device)
            ort_backend = OrtImageBackend(bundle.path(rel), chosen, ort_backend.session.providers, threads,
                                          bundle.read_bytes(rel))
            ort_backend.requested_device = providers[0]
        why += f" (note: {providers[0]} was listed but the session runs on {ort_backend.device})"
    ort_backend.variant_reason = why
    hw = ort_backend.session.input_shape("image")[2:]
    if any(isinstance(v, int) and v != bundle.preprocess.size for v in hw):
        raise BundleError(f"bundle {bundle.root}: image encoder {rel} takes {hw} pixels, the manifest's "
                          f"'preprocess.size' is {bundle.preprocess.size}")
    if ort_backend.dim is not None and ort_backend.dim != bundle.dim:
        raise BundleError(f"bundle {bundle.root}: image encoder {rel} gives dim {ort_backend.dim}, "
                          f"the index has dim {bundle.dim}")
    return ort_backend


def create_backend(bundle: Bundle, backend: str = "auto", variant: str = "auto",
                   threads: int | None = None) -> ImageBackend:
    if backend not in BACKEND_CHOICES:
        raise MalmError(f"unknown backend {backend!r}; one of {', '.join(BACKEND_CHOICES)}")
    if variant not in VARIANTS:
        raise MalmError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    row = BACKENDS[backend] if backend != "auto" else next(iter(BACKENDS.values()))
    return row.create(bundle, variant, threads)
