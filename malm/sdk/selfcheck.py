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
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from malm import cpu
from malm._atomic import write_text_atomic
from malm.bundle import verify_cache_dir
from malm.errors import BundleError
from malm.sdk.backends.base import ImageBackend
from malm.sdk.bundle_loader import Bundle

log = logging.getLogger("malm.sdk")
DEFAULT_MIN_COSINE = 0.98
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


def _section(bundle: Bundle) -> dict[str, Any] | None:
    sc = bundle.manifest.get("selfcheck")
    if sc is None:
        return None
    if not isinstance(sc, dict) or not isinstance(sc.get("inputs"), str) or \
            not isinstance(sc.get("fp32_embeddings"), str):
        raise BundleError(f"bundle {bundle.root}: bad selfcheck section in the manifest (needs 'inputs' and "
                          "'fp32_embeddings' file names)")
    mc = sc.get("min_cosine", DEFAULT_MIN_COSINE)
    if not isinstance(mc, (int, float)) or not -1 <= mc <= 1:
        raise BundleError(f"bundle {bundle.root}: selfcheck min_cosine must be a number in [-1, 1], got {mc!r}")
    return sc


def _stamp_key(bundle: Bundle, sc: dict[str, Any], backend: ImageBackend, encoder_rel: str | None) -> str:
    import onnxruntime

    parts = [bundle.file_hash(sc["inputs"]), bundle.file_hash(sc["fp32_embeddings"]),
             bundle.file_hash(encoder_rel) if encoder_rel else "", cpu.fingerprint(), backend.name,
             backend.device, backend.variant, onnxruntime.__version__]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def measure(bundle: Bundle, sc: dict[str, Any], backend: ImageBackend) -> float:
    """Mean cosine of `backend`'s embeddings of the reference inputs to their fp32 embeddings."""
    try:
        x = np.load(bundle.path(sc["inputs"]), allow_pickle=False).astype(np.float32)
        ref = np.load(bundle.path(sc["fp32_embeddings"]), allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise BundleError(f"bundle {bundle.root}: self-check data cannot be read ({e})") from None
    if x.ndim != 4 or ref.ndim != 2 or len(x) != len(ref) or ref.shape[1] != bundle.dim:
        raise BundleError(f"bundle {bundle.root}: self-check inputs {x.shape} / embeddings {ref.shape} do not "
                          f"fit an encoder of dim {bundle.dim}")
    got = backend.encode(x).embedding
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    return float((got * ref).sum(axis=1).mean())


def check(bundle: Bundle, backend: ImageBackend, encoder_rel: str | None) -> SelfCheck:
    """Run (or recall) the self-check of `backend` on this machine."""
    sc = _section(bundle)
    if sc is None:
        return SelfCheck(backend.variant, "no_data", None, DEFAULT_MIN_COSINE, cpu.description(), False, 0.0)
    min_cos = float(sc.get("min_cosine", DEFAULT_MIN_COSINE))
    stamp = verify_cache_dir() / f"selfcheck-{_stamp_key(bundle, sc, backend, encoder_rel)}.json"
    try:
        cos = float(json.loads(stamp.read_text())["cosine"])
        return SelfCheck(backend.variant, "passed" if cos >= min_cos else "failed", cos, min_cos,
                         cpu.description(), True, 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not checked on this machine yet
    t0 = time.perf_counter()
    cos = measure(bundle, sc, backend)
    seconds = time.perf_counter() - t0
    try:
        write_text_atomic(stamp, json.dumps({"cosine": cos, "bundle": str(bundle.root), "cpu": cpu.description(),
                                             "backend": f"{backend.name}/{backend.device}/{backend.variant}"}))
    except OSError:
        pass  # a read-only home only costs the next start another check
    return SelfCheck(backend.variant, "passed" if cos >= min_cos else "failed", cos, min_cos, cpu.description(),
                     False, round(seconds, 4))


def _reason(r: SelfCheck) -> str:
    return (f"mean cosine {r.cosine:.4f} to the bundle's fp32 reference < {r.min_cosine} on this CPU "
            f"({r.cpu})")


def choose(bundle: Bundle, candidates: list[str], make: Callable[[str], tuple[ImageBackend, str | None]], *,
           strict: bool = False) -> tuple[ImageBackend, SelfCheck]:
    """The first candidate whose self-check passes (all but the last may be skipped).

    `make(variant)` builds the backend and names its encoder file. A failure of the last candidate is kept
    (with a warning): there is nothing better to run. `strict` raises `SelfCheckError` on any failure.
    """
    rejected: list[dict[str, Any]] = []
    for i, name in enumerate(candidates):
        backend, rel = make(name)
        result = check(bundle, backend, rel)
        if result.status == "no_data" and name.startswith("int8") and cpu.int8_may_saturate() \
                and i + 1 < len(candidates):
            # A bundle from before self-checks: its int8 models were never made safe for this CPU.
            if strict:
                raise SelfCheckError(f"bundle {bundle.root}: has no self-check data and the {name} image encoder "
                                     f"may saturate on this CPU ({result.cpu}) (strict self-check)")
            log.warning("malm: the %s image encoder is not used: the bundle has no self-check data and int8 may "
                        "saturate on this CPU (%s); using %s instead (re-export to check it)", name, result.cpu,
                        candidates[i + 1])
            rejected.append({"encoder": name, "cosine": None, "reason": "no self-check data"})
            continue
        if result.status != "failed":
            break
        if strict:
            raise SelfCheckError(f"bundle {bundle.root}: the {name} image encoder disagrees with fp32: "
                                 f"{_reason(result)} (strict self-check)")
        rejected.append({"encoder": name, "cosine": result.cosine, "reason": "disagrees with fp32"})
        if i + 1 < len(candidates):
            log.warning("malm: the %s image encoder is not used: %s; using %s instead", name, _reason(result),
                        candidates[i + 1])
        else:
            log.warning("malm: the %s image encoder disagrees with fp32: %s; no other encoder to fall back to",
                        name, _reason(result))
    if rejected:
        result = SelfCheck(**{**asdict(result), "rejected": tuple(rejected)})
    return backend, result
