"""The one interface every image-encoder backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class EncoderOutput:
    embedding: np.ndarray  # [N, D] float32, L2-normalized
    tokens: np.ndarray | None = None  # [N, P, Dt] patch tokens when the model exports them


class ImageBackend(Protocol):
    """Normalized images [N, 3, H, W] float32 (as `malm.preprocess.preprocess` makes them) → embeddings.

    Implementations must be safe to call from several threads at once.
    """

    name: str  # "onnxruntime", "tensorrt", "coreml"
    variant: str  # "fp32", "int8", "fp16", ...
    device: str  # what runs it, e.g. "CPUExecutionProvider"
    has_tokens: bool

    def encode(self, images: np.ndarray, tokens: bool = False) -> EncoderOutput: ...

