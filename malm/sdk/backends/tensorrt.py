"""A native TensorRT engine backend (Jetson / NVIDIA GPUs), built from the bundle's static ONNX and cached.

Engines are tied to the GPU and the TensorRT version, so the cache key holds the compute capability,
TensorRT version and model hash (the same key `malm export --target tensorrt` uses, so an engine built
there is reused here). Needs the `tensorrt` and `cuda-python` packages, which ship with JetPack or the
NVIDIA wheels and cannot be installed on the project's build machines: this module is NOT exercised by
the test suite beyond the clear error when they are missing and the cache key.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import atomic_path
from malm.errors import BundleError, MalmError
from malm.sdk.backends.base import EncoderOutput
from malm.sdk.backends.ort import trt_cache_dir
from malm.sdk.bundle_loader import Bundle
from malm.vectors import l2_normalize

INSTALL_HINT = ("backend 'tensorrt' needs NVIDIA TensorRT's Python package `tensorrt` and `cuda-python` "
                "(JetPack ships them on Jetson; on x86 `pip install tensorrt cuda-python`); "
                "or use --backend onnxruntime")


def cache_key(compute_capability: tuple[int, int], trt_version: str, model_hash: str) -> str:
    """One engine per (GPU architecture, TensorRT version, model): anything else must rebuild.

    `malm export --target tensorrt` uses this same function, so an engine built there is reused here.
    """
    if len(compute_capability) != 2 or any(c < 0 for c in compute_capability):
        raise ValueError(f"compute capability must be (major, minor), got {compute_capability}")
    if not trt_version or not model_hash:
        raise ValueError("cache_key needs a TensorRT version and a model hash")
    safe_version = "".join(c if c.isalnum() or c == "." else "_" for c in trt_version)
    return f"sm{compute_capability[0]}{compute_capability[1]}-trt{safe_version}-{model_hash[:16]}"


def engine_path(cache_dir: Path, key: str, precision: str) -> Path:
    return cache_dir / f"image-{precision}-{key}.engine"


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, cudart) or a MalmError with the install hint."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise MalmError(INSTALL_HINT) from None
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found, no-redef, unused-ignore]
        except ImportError:
            raise MalmError(INSTALL_HINT) from None
    return trt, cudart


def build_engine_file(trt: Any, onnx_path: Path, path: Path, precision: str, logger: Any,
                      workspace_mb: int | None = None) -> None:
    """Parse the static ONNX, build an fp16 (or QDQ int8) engine and write it atomically to `path`."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MalmError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # QDQ nodes carry the scales: no calibration cache
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MalmError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(serialized))


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise MalmError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBackend:
    """Runs a serialized engine with static input [B,3,H,W]; one execution context per thread."""

    name = "tensorrt"

    def __init__(self, onnx_path: Path, model_hash: str, precision: str, cache_dir: Path | None = None) -> None:
        trt, cudart = import_tensorrt()
        self._trt, self._cudart = trt, cudart
        self.variant = precision
        props = _check(cudart.cudaGetDeviceProperties(0))
        cc = (int(props.major), int(props.minor))
        self.device = f"GPU sm{cc[0]}{cc[1]}"
        cache = cache_dir or trt_cache_dir()
        path = engine_path(cache, cache_key(cc, trt.__version__, model_hash), precision)
        logger = trt.Logger(trt.Logger.WARNING)
        if not path.is_file():
            build_engine_file(trt, onnx_path, path, precision, logger)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise MalmError(f"TensorRT engine {path} cannot be loaded (delete it to rebuild)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.has_tokens = "tokens" in names
        self.input_shape = tuple(self.engine.get_tensor_shape("image"))
        self._local = threading.local()

    def _context(self) -> Any:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = self.engine.create_execution_context()
        return ctx

    def encode(self, images: np.ndarray, tokens: bool = False) -> EncoderOutput:
        if tokens and not self.has_tokens:
            raise MalmError("this TensorRT engine has no 'tokens' output (needed for re-ranking)")
        batch = int(self.input_shape[0])
        embs, toks = [], []
        for i in range(0, len(images), batch):
            chunk = np.zeros(self.input_shape, np.float32)
            part = images[i:i + batch]
            chunk[:len(part)] = part
            out = self._run(chunk, ["embedding", "tokens"] if tokens else ["embedding"])
            embs.append(out["embedding"][:len(part)])
            if tokens:
                toks.append(out["tokens"][:len(part)])
        return EncoderOutput(l2_normalize(np.concatenate(embs)), np.concatenate(toks) if tokens else None)

    def _run(self, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        cudart, ctx = self._cudart, self._context()
        host = {"image": np.ascontiguousarray(x)}
        for name in outputs:
            host[name] = np.zeros(tuple(self.engine.get_tensor_shape(name)), np.float32)
        dev = {name: _check(cudart.cudaMalloc(arr.nbytes)) for name, arr in host.items()}
        stream = _check(cudart.cudaStreamCreate())
        try:
            h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(cudart.cudaMemcpyAsync(dev["image"], host["image"].ctypes.data, x.nbytes, h2d, stream))
            for name, ptr in dev.items():
                ctx.set_tensor_address(name, int(ptr))
            if not ctx.execute_async_v3(stream):
                raise MalmError("TensorRT inference failed")
            for name in outputs:
                _check(cudart.cudaMemcpyAsync(host[name].ctypes.data, dev[name], host[name].nbytes, d2h, stream))
            _check(cudart.cudaStreamSynchronize(stream))
        finally:
            for ptr in dev.values():
                cudart.cudaFree(ptr)
            cudart.cudaStreamDestroy(stream)
        return {name: host[name] for name in outputs}


def create(bundle: Bundle, variant: str, threads: int | None) -> TensorRTBackend:
    """The `tensorrt` row of the backend table: the bundle's TensorRT-ready ONNX as a cached engine."""
    import_tensorrt()  # the install hint before anything else
    trt_entry = bundle.encoder("image_tensorrt")
    if not trt_entry:
        raise BundleError(f"bundle {bundle.root}: has no TensorRT-ready ONNX (export with --target tensorrt)")
    rel = trt_entry.file
    return TensorRTBackend(bundle.unchanged_path(rel), bundle.file_hash(rel), trt_entry.precision or "fp16")
