"""The bundle checks its image encoder where it runs: numerics depend on the CPU, like bytes on the disk.

A bundle exported by this malm carries a few held-out inputs and their fp32 embeddings (manifest section
"selfcheck", written by malm/export/int8_gate.py). On load the chosen encoder embeds them once; its mean
cosine to the fp32 embeddings must reach the manifest's `min_cosine`. Quantized kernels differ across CPUs
(x86 without VNNI saturates u8*s8 pair sums), so an int8 encoder that was right where it was exported can be
wrong here. With `variant="auto"` a disagreeing encoder is replaced by the next one (int8_cpu -> int8 ->
fp32) with one warning line naming the reason and the CPU; `strict=True` raises instead.

The result is remembered per (encoder file, self-check files, machine, backend, runtime version) in the
user's cache, like the hash verification stamp: a restart pays nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malm import cpu
from malm._atomic import write_text_atomic
from malm.bundle import verify_cache_dir
from malm.errors import BundleError
from malm.manifest import DEFAULT_MIN_COSINE, SelfCheckSection
from malm.sdk.backends.base import ImageBackend
from malm.sdk.bundle_loader import Bundle

log = logging.getLogger("malm.sdk")
STATUSES = ("passed", "failed", "no_data")


class SelfCheckError(BundleError):
    """The image encoder disagrees with the bundle's fp32 reference on this machine (strict mode)."""


@dataclass(frozen=True)
class SelfCheck:
    """What the self-check found for the encoder that runs (and the ones it fell back from)."""

    encoder: str  # the variant that runs: "int8_cpu", "int8", "fp32", or the backend's own (e.g. "fp16")
    status: str  # "passed" | "failed" | "no_data" (a bundle exported before self-checks)
    cosine: float | None  # mean cosine to the fp32 reference embeddings on this machine
    min_cosine: float
    cpu: str
    remembered: bool  # the result came from the cache, not from running the encoder now
    seconds: float  # time the check took at this load (0 when remembered)
    rejected: tuple[dict[str, Any], ...] = field(default=())  # encoders that disagreed, in order

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejected"] = [dict(r) for r in self.rejected]
        return d


def _section(bundle: Bundle) -> SelfCheckSection | None:
    return bundle.sections.selfcheck


@dataclass(frozen=True)
class Target:
    """What a self-check result is remembered for, known before the (costly) session is built."""

    variant: str
    backend: str  # "onnxruntime", "tensorrt", "coreml"
    device: str  # e.g. "CPUExecutionProvider"
    encoder_file: str | None  # the bundle file it runs


def _stamp(bundle: Bundle, sc: SelfCheckSection, t: Target) -> Path:
    import onnxruntime

    parts = [bundle.file_hash(sc.inputs), bundle.file_hash(sc.fp32_embeddings), sc.min_cosine,
             bundle.file_hash(t.encoder_file) if t.encoder_file else "", cpu.fingerprint(), t.backend, t.device,
             t.variant, onnxruntime.__version__]
    return verify_cache_dir() / f"selfcheck-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()}.json"


def recall(bundle: Bundle, t: Target) -> SelfCheck | None:
    """The remembered result for `t` on this machine, or None (not checked here yet, or no self-check data)."""
    sc = _section(bundle)
    if sc is None or bundle.verification == "off":
        # The result is remembered for the encoder's sha256: only a verified encoder is known to have it.
        return None
    try:
        cos = float(json.loads(_stamp(bundle, sc, t).read_text())["cosine"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return SelfCheck(t.variant, "passed" if cos >= sc.min_cosine else "failed", cos, sc.min_cosine,
                     cpu.description(), True, 0.0)


def measure(bundle: Bundle, sc: SelfCheckSection, backend: ImageBackend) -> float:
    """Mean cosine of `backend`'s embeddings of the reference inputs to their fp32 embeddings."""
    try:
        stored = np.load(io.BytesIO(bundle.read_bytes(sc.inputs)), allow_pickle=False)
        ref = np.load(io.BytesIO(bundle.read_bytes(sc.fp32_embeddings)), allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise BundleError(f"bundle {bundle.root}: self-check data cannot be read ({e})") from None
    if stored.dtype != np.dtype(sc.inputs_dtype):
        raise BundleError(f"bundle {bundle.root}: self-check inputs {sc.inputs} are {stored.dtype}, the manifest "
                          f"says {sc.inputs_dtype}")
    x = stored.astype(np.float32)  # float16 -> float32 is exact: the reference embeddings saw these values
    if x.ndim != 4 or ref.ndim != 2 or len(x) != len(ref) or ref.shape[1] != bundle.dim:
        raise BundleError(f"bundle {bundle.root}: self-check inputs {x.shape} / embeddings {ref.shape} do not "
                          f"fit an encoder of dim {bundle.dim}")
    got = backend.encode(x).embedding
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    return float((got * ref).sum(axis=1).mean())


def check(bundle: Bundle, backend: ImageBackend, t: Target) -> SelfCheck:
    """Run (or recall) the self-check of `backend` (described by `t`) on this machine."""
    sc = _section(bundle)
    if sc is None:
        return SelfCheck(backend.variant, "no_data", None, DEFAULT_MIN_COSINE, cpu.description(), False, 0.0)
    remembered = recall(bundle, t)
    if remembered is not None:
        return remembered
    t0 = time.perf_counter()
    cos = measure(bundle, sc, backend)
    seconds = time.perf_counter() - t0
    try:
        if bundle.verification == "off":
            raise OSError("unverified bytes: nothing to remember the result for")
        write_text_atomic(_stamp(bundle, sc, t), json.dumps({"cosine": cos, "bundle": str(bundle.root),
                                                             "cpu": cpu.description(), "target": asdict(t)}))
    except OSError:
        pass  # a read-only home only costs the next start another check
    return SelfCheck(backend.variant, "passed" if cos >= sc.min_cosine else "failed", cos, sc.min_cosine,
                     cpu.description(), False, round(seconds, 4))


def choose(bundle: Bundle, targets: list[Target], make: Callable[[str], ImageBackend], *,
           strict: bool = False) -> tuple[ImageBackend, SelfCheck]:
    """The first target whose self-check passes; the last one runs whatever its result (nothing is left).

    A failure remembered on this machine skips building that backend, so a restart pays nothing. One
    warning line names what was not used, why, the CPU and what runs instead; `strict` raises instead.
    """
    rejected: list[dict[str, Any]] = []
    backend: ImageBackend | None = None
    result: SelfCheck | None = None
    for i, t in enumerate(targets):
        last = i + 1 == len(targets)
        result = recall(bundle, t)
        if result is None or result.status == "passed" or last:
            backend = make(t.variant)
            result = check(bundle, backend, t)
        if result.status == "no_data" and t.variant.startswith("int8") and cpu.int8_may_saturate() and not last:
            # A bundle from before self-checks: its int8 models were never checked on such a CPU.
            rejected.append({"encoder": t.variant, "cosine": None, "reason": "no self-check data; int8 may "
                             "saturate on x86 without VNNI"})
        elif result.status == "failed":
            rejected.append({"encoder": t.variant, "cosine": round(float(result.cosine or 0.0), 4),
                             "reason": f"mean cosine to the bundle's fp32 reference < {result.min_cosine}"})
        else:
            break
        if strict:
            raise SelfCheckError(f"bundle {bundle.root}: the {t.variant} image encoder disagrees with fp32 on this "
                                 f"CPU ({result.cpu}): {_describe(rejected[-1])} (strict self-check)")
        if last:
            break
    assert backend is not None and result is not None  # the last target is always built
    if rejected:
        what = "; ".join(f"{r['encoder']}: {_describe(r)}" for r in rejected)
        if result.encoder != rejected[-1]["encoder"]:
            log.warning("malm: image encoder not used on this CPU (%s): %s; using %s instead", result.cpu, what,
                        result.encoder)
        else:
            log.warning("malm: image encoder disagrees with fp32 on this CPU (%s): %s; no other encoder to fall "
                        "back to", result.cpu, what)
        result = SelfCheck(**{**asdict(result), "rejected": tuple(rejected)})
    return backend, result


def _describe(r: dict[str, Any]) -> str:
    return f"{r['reason']} (mean cosine {r['cosine']:.4f})" if r["cosine"] is not None else r["reason"]
