"""The image-encoder backends: one table (name, factory, bundle encoder, requirements), as the export targets.

The table drives `create_backend`, the CLI's `--backend` choices, `encoder_file` and `malm doctor`. It is
stdlib only (the CLI lists it at start-up); each factory is imported on use. A new backend is a module
under `malm/sdk/backends/` with a `create(bundle, variant, threads) -> ImageBackend` (its heavy imports
inside, raising the install hint when missing) and one row here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The image-encoder variants a bundle may carry, and their manifest encoder names; "auto" picks per device.
IMAGE_ENCODERS = {"int8_cpu": "image_int8_cpu", "int8": "image_int8", "fp32": "image_fp32"}
VARIANTS = ("auto", *IMAGE_ENCODERS)


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    factory: str  # "module:function" building it: (bundle, variant, threads) -> ImageBackend
    encoder: str | None  # the manifest encoder it runs; None: the image-encoder variant chosen (IMAGE_ENCODERS)
    requires: tuple[str, ...]  # Python modules it needs (doctor finds them by spec, never imports them)
    install: str  # what to install when they are missing
    platforms: tuple[str, ...] = ()  # the `sys.platform`s it runs on (empty: any)

    @property
    def create(self) -> Callable[..., Any]:
        """The factory (imported on use: the table stays light for the CLI)."""
        module, _, function = self.factory.partition(":")
        return getattr(importlib.import_module(module), function)

    def available(self) -> bool:
        """Whether it can run here: the platform, and its Python modules found by spec (nothing heavy imported)."""
        if self.platforms and sys.platform not in self.platforms:
            return False
        return all(importlib.util.find_spec(m) is not None for m in self.requires)


# The first row is what "auto" uses: ONNX Runtime, which itself prefers its TensorRT / CUDA / CoreML providers.
BACKENDS: dict[str, Backend] = {
    "onnxruntime": Backend(
        "onnxruntime", "ONNX Runtime, with its TensorRT / CUDA / CoreML execution providers when present",
        "malm.sdk.backends.choice:create_onnxruntime", None, ("onnxruntime",),
        "pip install 'malm[cpu]' (or 'malm[gpu]'; on a Jetson NVIDIA's JetPack onnxruntime-gpu wheel)",
    ),
    "tensorrt": Backend(
        "tensorrt", "a native TensorRT engine built on the device from the bundle's static ONNX, cached",
        "malm.sdk.backends.tensorrt:create", "image_tensorrt", ("tensorrt", "cuda"),
        "JetPack ships tensorrt and cuda-python on a Jetson; on x86 pip install tensorrt cuda-python",
    ),
    "coreml": Backend(
        "coreml", "the bundle's CoreML mlprogram on macOS (Neural Engine / GPU / CPU)",
        "malm.sdk.backends.coreml:create", "image_coreml", ("coremltools",),
        "macOS only: pip install coremltools", platforms=("darwin",),
    ),
}
BACKEND_CHOICES = ("auto", *BACKENDS)
