"""Embedding math every side shares, in numpy (light layer: the SDK, the index, evaluation and export use it).

The torch side normalizes with `torch.nn.functional.normalize(x.float(), dim=-1)` inside the models.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # a zero row stays zero instead of dividing by zero


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Float32 rows (last axis) scaled to unit L2 norm."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(EPS))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of `a` with row i of `b`."""
    return (l2_normalize(a) * l2_normalize(b)).sum(axis=-1)
