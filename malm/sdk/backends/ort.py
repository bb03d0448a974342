"""ONNX Runtime, wrapped once: an ordered execution-provider preference and explicit thread settings.

TensorRT and CUDA execution providers exist in GPU builds of onnxruntime (onnxruntime-gpu, JetPack's
wheels), CoreML in macOS builds; the plain CPU one everywhere. We take the best one present.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from malm.errors import BundleError, MalmError
from malm.sdk.backends.base import EncoderOutput
from malm.vectors import l2_normalize

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
COREML = "CoreMLExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_PREFERENCE: tuple[str, ...] = (TENSORRT, CUDA, COREML, CPU)


INSTALL_HINT = ("install the ONNX Runtime that fits this device: pip install 'malm[cpu]' (x86 / ARM CPU, "
                "macOS with CoreML), pip install 'malm[gpu]' (NVIDIA CUDA / TensorRT), or on a Jetson NVIDIA's "
                "JetPack onnxruntime-gpu wheel and plain 'malm'")


def import_onnxruntime() -> ModuleType:
    """The one place the SDK imports ONNX Runtime: it is an extra, so its absence is a clear error."""
    try:
        import onnxruntime
    except ImportError as e:
        raise MalmError(f"ONNX Runtime is not installed ({e}); {INSTALL_HINT}") from None
    if not hasattr(onnxruntime, "InferenceSession"):
        # onnxruntime and onnxruntime-gpu installed together (or one uninstalled over the other) leave a
        # namespace with no runtime in it.
        raise MalmError(f"ONNX Runtime at {getattr(onnxruntime, '__path__', '?')} is broken (no InferenceSession): "
                        "onnxruntime and onnxruntime-gpu were probably both installed; pip uninstall both, then "
                        + INSTALL_HINT.replace("install the", "reinstall the"))
    return onnxruntime


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def select_providers(available: Sequence[str], preference: Sequence[str] = PROVIDER_PREFERENCE) -> list[str]:
    """The preferred providers that are present, best first; CPU always last as the fallback."""
    chosen = [p for p in preference if p in available and p != CPU]
    return [*chosen, CPU]


def trt_cache_dir() -> Path:
    env = os.environ.get("MALM_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "malm" / "tensorrt"


def provider_options(provider: str) -> dict[str, Any]:
    if provider == TENSORRT:
        # Engines are slow to build: cache them (keyed by ORT itself on model + GPU + TRT version).
        cache = trt_cache_dir() / "ort"
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": True}
    return {}


class OrtSession:
    """One InferenceSession; `run` is thread-safe (ONNX Runtime allows concurrent Run calls)."""

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int | None = None, inter_op_threads: int = 1, model_bytes: bytes | None = None) -> None:
        """model_bytes: the model's verified bytes (`Bundle.read_bytes`); `path` then only names it."""
        ort = import_onnxruntime()

        self.path = Path(path)
        if threads is not None and threads < 1:
            raise MalmError(f"threads must be >= 1, got {threads}")
        wanted = list(providers) if providers is not None else select_providers(available_providers())
        opts = ort.SessionOptions()
        # 0 = ONNX Runtime's default (all cores); an explicit count keeps latency predictable beside an app.
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        for_ort = [(p, provider_options(p)) for p in wanted]
        if for_ort and for_ort[0][0] == TENSORRT:
            trt_cache_dir().joinpath("ort").mkdir(parents=True, exist_ok=True)
        try:
            source = model_bytes if model_bytes is not None else str(self.path)
            self.session = ort.InferenceSession(source, opts, providers=for_ort)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad models
            raise BundleError(f"model {self.path}: ONNX Runtime cannot load it ({e})") from None
        self.providers: list[str] = list(self.session.get_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def input_shape(self, name: str) -> list[int | str | None]:
        for i in self.session.get_inputs():
            if i.name == name:
                return list(i.shape)
        raise KeyError(name)

    def output_shape(self, name: str) -> list[int | str | None]:
        for o in self.session.get_outputs():
            if o.name == name:
                return list(o.shape)
        raise KeyError(name)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        try:
            values = self.session.run(names, dict(feeds))
        except Exception as e:  # noqa: BLE001 - ORT's own types: inputs the model does not take (a bundle mismatch)
            raise BundleError(f"model {self.path}: ONNX Runtime cannot run it on these inputs "
                              f"({str(e).strip()[:300]})") from None
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


class OrtImageBackend:
    """An image ONNX (`image` [N,3,H,W] → `embedding` [N,D], optional `tokens` [N,P,Dt])."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], variant: str, providers: Sequence[str] | None = None,
                 threads: int | None = None, model_bytes: bytes | None = None) -> None:
        self.session = OrtSession(path, providers, threads, model_bytes=model_bytes)
        self.variant = variant
        self.device = self.session.providers[0]  # what the session runs on, after any silent fallback
        self.requested_device = self.device  # the provider asked for first (differs after a fallback)
        self.variant_reason = f"asked for {variant}"  # create_backend says why when it chose
        if "image" not in self.session.input_names or "embedding" not in self.session.output_names:
            raise BundleError(f"model {path}: expected input 'image' and output 'embedding', has inputs "
                              f"{self.session.input_names} outputs {self.session.output_names}")
        self.has_tokens = "tokens" in self.session.output_names
        shape = self.session.output_shape("embedding")
        self.dim = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        in_shape = self.session.input_shape("image")
        self.static_batch = in_shape[0] if isinstance(in_shape[0], int) else None

    def encode(self, images: np.ndarray, tokens: bool = False) -> EncoderOutput:
        if tokens and not self.has_tokens:
            raise MalmError(f"model {self.session.path} has no 'tokens' output (needed for re-ranking)")
        names = ["embedding", "tokens"] if tokens else ["embedding"]
        x = np.ascontiguousarray(images, dtype=np.float32)
        if self.static_batch is not None and len(x) != self.static_batch:
            # A static-shape model (e.g. TensorRT-ready, batch 1): feed it one image at a time.
            parts = [self.encode(x[i:i + self.static_batch], tokens) for i in range(0, len(x), self.static_batch)]
            tok = np.concatenate([p.tokens for p in parts if p.tokens is not None]) if tokens else None
            return EncoderOutput(np.concatenate([p.embedding for p in parts]), tok)
        out = self.session.run({"image": x}, names)
        return EncoderOutput(l2_normalize(out["embedding"]), out.get("tokens"))
