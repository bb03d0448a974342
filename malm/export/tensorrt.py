"""TensorRT: the TensorRT-ready ONNX (static 1×3×H×W, fp16 or int8 QDQ) and, where possible, the engine.

Engines are tied to the GPU and the TensorRT version, so they are built on the target device into a
cache keyed by compute capability, TensorRT version and model hash. Where `tensorrt` does not import or
no GPU is present we say so and record the exact `trtexec` command in the bundle instead; running
`malm export --target tensorrt` on the device completes the build.

NOTE: TensorRT cannot be installed on the project's build machines, so `build_engine` is not exercised by
the test suite; everything around it (static shapes, QDQ zero points, cache keys, the message) is.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm.sdk.backends.ort import trt_cache_dir
from malm.sdk.backends.tensorrt import build_engine_file, cache_key, engine_path

STATIC_ONNX = "tensorrt/image_static.onnx"


# One cache and one key format for export and the SDK: an engine built by either is reused by the other.
default_cache_dir = trt_cache_dir


def trtexec_command(onnx_path: str, precision: str, engine: str = "image.engine") -> str:
    """The exact command that builds the engine on the device (explicit quantization for QDQ models)."""
    if precision not in ("fp16", "int8"):
        raise ValueError(f"TensorRT precision must be fp16 or int8, got {precision!r}")
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}", "--fp16"]
    if precision == "int8":
        args.append("--int8")  # the QDQ nodes carry the scales; no calibration cache is needed
    return " ".join(shlex.quote(a) for a in args)


@dataclass(frozen=True)
class EngineResult:
    built: bool
    message: str
    engine: Path | None = None
    key: str | None = None


def probe() -> tuple[Any, tuple[int, int] | None, str]:
    """(tensorrt module or None, GPU compute capability or None, why not) without raising."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        return None, None, ("TensorRT is not installed here (it ships with JetPack on Jetson, or "
                            "`pip install tensorrt` on x86 with CUDA)")
    try:
        import torch

        if not torch.cuda.is_available():
            return trt, None, "no CUDA GPU is visible here"
        return trt, torch.cuda.get_device_capability(0), ""
    except Exception as e:  # noqa: BLE001 - any CUDA probing failure means: no GPU to build on
        return trt, None, f"cannot query the GPU ({e})"


def build_engine(onnx_path: Path, precision: str, model_hash: str, cache_dir: Path | None = None,
                 workspace_mb: int = 1024) -> EngineResult:
    """Build and cache the engine where TensorRT and a GPU exist; otherwise explain why not."""
    trt, cc, why = probe()
    if trt is None or cc is None:
        return EngineResult(False, f"TensorRT engine not built: {why}. Run the recorded `trtexec` command "
                                   "(or `malm export --target tensorrt`) on the device.")
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(cc, trt.__version__, model_hash)
    path = engine_path(cache_dir, key, precision)
    if path.is_file():
        return EngineResult(True, f"TensorRT engine already cached: {path}", path, key)
    build_engine_file(trt, onnx_path, path, precision, trt.Logger(trt.Logger.WARNING), workspace_mb)
    return EngineResult(True, f"TensorRT engine built: {path}", path, key)
