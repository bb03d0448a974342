"""TensorRT: the TensorRT-ready ONNX (static 1×3×H×W, fp16 or int8 QDQ) and, where possible, the engine.

Engines are tied to the GPU and the TensorRT version, so they are built on the target device into a
cache keyed by compute capability, TensorRT version and model hash. Where `tensorrt` does not import or
no GPU is present we say so and record the exact `trtexec` command in the bundle instead; running
`malm export --target tensorrt` on the device completes the build.

NOTE: TensorRT cannot be installed on the project's build machines, so `build_engine` is not exercised by
the test suite; everything around it (static shapes, QDQ zero points, cache keys, the message) is.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm._atomic import atomic_path
from malm.errors import MalmError

STATIC_ONNX = "tensorrt/image_static.onnx"


def default_cache_dir() -> Path:
    env = os.environ.get("MALM_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "malm" / "tensorrt"


def cache_key(compute_capability: tuple[int, int], trt_version: str, model_hash: str) -> str:
    """One engine per (GPU architecture, TensorRT version, model): anything else must rebuild."""
    if len(compute_capability) != 2 or any(c < 0 for c in compute_capability):
        raise ValueError(f"compute capability must be (major, minor), got {compute_capability}")
    if not trt_version or not model_hash:
        raise ValueError("cache_key needs a TensorRT version and a model hash")
    safe_version = "".join(c if c.isalnum() or c == "." else "_" for c in trt_version)
    return f"sm{compute_capability[0]}{compute_capability[1]}-trt{safe_version}-{model_hash[:16]}"


def engine_path(cache_dir: Path, key: str, precision: str) -> Path:
    return cache_dir / f"image-{precision}-{key}.engine"


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
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MalmError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MalmError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return EngineResult(True, f"TensorRT engine built: {path}", path, key)
