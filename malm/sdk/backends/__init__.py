"""Image-encoder backends behind one interface, and the choice between them.

Order of preference for `backend="auto"`: ONNX Runtime (with its TensorRT / CUDA / CoreML execution
providers when present), then a native TensorRT engine, then CoreML. ONNX Runtime is a base
dependency, so "auto" resolves to it wherever the SDK is installed.
"""

from __future__ import annotations

from malm.errors import BundleError, MalmError
from malm.sdk.backends.base import EncoderOutput, ImageBackend
from malm.sdk.backends.ort import (
    COREML,
    CUDA,
    OrtImageBackend,
    OrtSession,
    available_providers,
    select_providers,
)
from malm.sdk.bundle_loader import Bundle

BACKENDS = ("auto", "onnxruntime", "tensorrt", "coreml")
VARIANTS = ("auto", "int8", "fp32")
IMAGE_ENCODERS = {"int8": "image_int8", "fp32": "image_fp32"}

__all__ = ["BACKENDS", "VARIANTS", "EncoderOutput", "ImageBackend", "OrtImageBackend", "OrtSession",
           "choose_variant", "create_backend", "select_providers"]


def choose_variant(bundle: Bundle, variant: str, first_provider: str) -> str:
    """int8 where it is fast (CPU, TensorRT EP), fp32 where QDQ int8 is not (CUDA / CoreML EPs)."""
    present = [v for v in ("int8", "fp32") if bundle.encoder(IMAGE_ENCODERS[v])]
    if not present:
        raise BundleError(f"bundle {bundle.root}: has no ONNX image encoder (image_int8 or image_fp32)")
    if variant == "auto":
        order = ("fp32", "int8") if first_provider in (CUDA, COREML) else ("int8", "fp32")
        return next(v for v in order if v in present)
    if variant not in present:
        raise BundleError(f"bundle {bundle.root}: has no {variant} image encoder (has: {', '.join(present)})")
    return variant


def create_backend(bundle: Bundle, backend: str = "auto", variant: str = "auto",
                   threads: int | None = None) -> ImageBackend:
    if backend not in BACKENDS:
        raise MalmError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if variant not in VARIANTS:
        raise MalmError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    if backend in ("auto", "onnxruntime"):
        providers = select_providers(available_providers())
        chosen = choose_variant(bundle, variant, providers[0])
        image_entry = bundle.encoder(IMAGE_ENCODERS[chosen]) or {}
        ort_backend = OrtImageBackend(bundle.path(str(image_entry.get("file"))), chosen, providers, threads)
        if ort_backend.dim is not None and ort_backend.dim != bundle.dim:
            raise BundleError(f"bundle {bundle.root}: image encoder {image_entry.get('file')} gives dim {ort_backend.dim}, "
                              f"the index has dim {bundle.dim}")
        return ort_backend
    if backend == "tensorrt":
        from malm.sdk.backends.tensorrt import TensorRTBackend, import_tensorrt

        import_tensorrt()  # the install hint before anything else
        trt_entry = bundle.encoder("image_tensorrt")
        if not trt_entry:
            raise BundleError(f"bundle {bundle.root}: has no TensorRT-ready ONNX (export with --target tensorrt)")
        rel = str(trt_entry["file"])
        return TensorRTBackend(bundle.path(rel), bundle.file_hash(rel), str(trt_entry.get("precision", "fp16")))
    from malm.sdk.backends.coreml import CoreMLBackend, require_macos

    require_macos()
    entry = bundle.encoder("image_coreml")
    if not entry:
        raise BundleError(f"bundle {bundle.root}: has no CoreML model (export with --target coreml)")
    return CoreMLBackend(bundle.path(str(entry["file"])), bundle.preprocess, str(entry.get("precision", "fp16")))
