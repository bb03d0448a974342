"""CoreML backend (macOS only): the bundle's `.mlpackage`, whose `image` input is an ImageType.

CoreML prediction runs only on macOS; elsewhere loading says so plainly. Not exercised by the test
suite beyond that error (the project's machines are Linux).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from malm.errors import BundleError, MalmError
from malm.preprocess import PreprocessConfig
from malm.sdk.backends.base import EncoderOutput
from malm.sdk.bundle_loader import Bundle
from malm.vectors import l2_normalize


def require_macos() -> None:
    if sys.platform != "darwin":
        raise MalmError(f"backend 'coreml' runs only on macOS (this is {sys.platform}); use --backend onnxruntime")


class CoreMLBackend:
    name = "coreml"
    has_tokens = False  # the CoreML export carries the embedding only

    def __init__(self, path: Path, preprocess: PreprocessConfig, variant: str = "fp16") -> None:
        require_macos()
        try:
            import coremltools as ct  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise MalmError("backend 'coreml' needs coremltools (`pip install coremltools`)") from None
        self.model: Any = ct.models.MLModel(str(path))
        self.cfg = preprocess
        self.variant = variant
        self.device = "CoreML"
        self._lock = threading.Lock()  # MLModel.predict is not documented as thread-safe

    def encode(self, images: np.ndarray, tokens: bool = False) -> EncoderOutput:
        if tokens:
            raise MalmError("the CoreML model has no 'tokens' output: re-ranking needs --backend onnxruntime")
        # The model takes the un-normalized RGB crop (ImageType, scale 1/255, mean/std inside the model):
        # undo `normalize` exactly (the pixels were uint8).
        mean = np.asarray(self.cfg.mean, np.float32)[:, None, None]
        std = np.asarray(self.cfg.std, np.float32)[:, None, None]
        out = []
        for x in images:
            rgb = np.clip(np.rint((x * std + mean) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            with self._lock:
                pred = self.model.predict({"image": Image.fromarray(rgb, "RGB")})
            out.append(np.asarray(pred["embedding"], np.float32).reshape(-1))
        return EncoderOutput(l2_normalize(np.stack(out)))


def create(bundle: Bundle, variant: str, threads: int | None) -> CoreMLBackend:
    """The `coreml` row of the backend table: the bundle's CoreML model (macOS only)."""
    require_macos()
    entry = bundle.encoder("image_coreml")
    if not entry:
        raise BundleError(f"bundle {bundle.root}: has no CoreML model (export with --target coreml)")
    return CoreMLBackend(bundle.unchanged_path(entry.file), bundle.preprocess, entry.precision or "fp16")
