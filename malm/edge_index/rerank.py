"""What local re-ranking needs: stored recipe token features and the scorers that use them.

The global embedding finds candidates (e.g. top 50); re-ranking re-scores them with token-level
matching between the photo's patch tokens and each candidate's recipe tokens, fused with the global
score: `score = (1 - weight) * global + weight * local`.

Stored on disk (manifest `rerank` section names the files):
    rerank/recipe_tokens.npy   float16 [total_tokens, dim], rows of all recipes one after another
    rerank/recipe_offsets.npy  int64 [next_label + 1]: recipe `label` owns rows offsets[label]:offsets[label+1]
Both are memory-mapped, so a million-recipe store costs no RAM until a candidate is scored.

Scorers behind one protocol (`LocalScorer`): the late-interaction score computed here in numpy, or a
trained matching head exported to ONNX (inputs `image_tokens [1,P,D]`, `recipe_tokens [N,S,D]`,
`recipe_mask [N,S]` bool, output `score [N]`), run by the SDK's ONNX Runtime wrapper.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from malm._atomic import atomic_path
from malm.errors import BundleError, MalmError
from malm.manifest import OFFSETS_FILE, RERANK_KINDS, TOKENS_FILE, RerankSettings  # noqa: F401  (re-exported)

KINDS = RERANK_KINDS


class TokenStore:
    """Memory-mapped recipe token features by label."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        if tokens.ndim != 2 or offsets.ndim != 1 or len(offsets) < 1:
            raise BundleError(f"rerank tokens: bad shapes tokens={tokens.shape} offsets={offsets.shape}")
        if int(offsets[-1]) != len(tokens) or (np.diff(offsets) < 0).any():
            raise BundleError("rerank tokens: offsets do not match the token rows (truncated or corrupted)")
        self.tokens = tokens
        self.offsets = offsets

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @classmethod
    def load(cls, tokens_path: str | os.PathLike[str], offsets_path: str | os.PathLike[str]) -> TokenStore:
        try:
            tokens = np.load(tokens_path, mmap_mode="r", allow_pickle=False)
            offsets = np.load(offsets_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BundleError(f"rerank tokens {tokens_path}: cannot be read ({e})") from None
        return cls(tokens, np.asarray(offsets, dtype=np.int64))

    def get(self, label: int) -> np.ndarray:
        if not 0 <= label < len(self.offsets) - 1:
            return np.zeros((0, self.dim), np.float16)
        return np.asarray(self.tokens[self.offsets[label]:self.offsets[label + 1]])


def write_tokens(directory: str | os.PathLike[str], per_label: Mapping[int, np.ndarray], next_label: int,
                 dim: int) -> tuple[Path, Path]:
    """Write the two arrays (atomically) for labels < next_label; labels without tokens own no rows."""
    directory = Path(directory)
    offsets = np.zeros(next_label + 1, np.int64)
    for label in range(next_label):
        n = len(per_label[label]) if label in per_label else 0
        offsets[label + 1] = offsets[label] + n
    tokens = np.zeros((int(offsets[-1]), dim), np.float16)
    for label, rows in per_label.items():
        if label >= next_label:
            raise ValueError(f"tokens for label {label} >= next_label {next_label}")
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != dim:
            raise MalmError(f"recipe tokens must be [n, {dim}], got {rows.shape}")
        tokens[offsets[label]:offsets[label + 1]] = rows.astype(np.float16)
    paths = directory / "recipe_tokens.npy", directory / "recipe_offsets.npy"
    arrays: tuple[np.ndarray, np.ndarray] = (tokens, offsets)
    for path, arr in zip(paths, arrays, strict=True):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return paths


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def late_interaction(image_tokens: np.ndarray, recipe_tokens: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over the photo's patches of the best cosine among each recipe's tokens; 0 for no tokens.

    image_tokens [P, D]; recipe_tokens: one [S_i, D] array per candidate → scores [N].
    """
    img = _unit(image_tokens)
    lengths = np.array([len(t) for t in recipe_tokens], np.int64)
    out = np.zeros(len(recipe_tokens), np.float32)
    nonempty = lengths > 0
    if not nonempty.any():
        return out
    flat = _unit(np.concatenate([t for t in recipe_tokens if len(t)], axis=0))
    # einsum, not `@`: these products are small, and a multi-threaded BLAS on a busy device can spend 100x
    # longer waking its threads than computing (measured: 50 ms vs 0.7 ms for 64 x 739 x 128 on 2 busy cores).
    sims = np.einsum("pd,sd->ps", img, flat)  # [P, sum S]
    starts = np.concatenate([[0], np.cumsum(lengths[nonempty])[:-1]])
    best = np.maximum.reduceat(sims, starts, axis=1)  # [P, N_nonempty]: max over each recipe's tokens
    out[nonempty] = best.mean(axis=0)
    return out


class LocalScorer(Protocol):
    """Scores candidates locally: image tokens [P, D] and each candidate's tokens → [N] scores."""

    def __call__(self, image_tokens: np.ndarray, recipe_tokens: Sequence[np.ndarray]) -> np.ndarray: ...


class LateInteractionScorer:
    def __call__(self, image_tokens: np.ndarray, recipe_tokens: Sequence[np.ndarray]) -> np.ndarray:
        return late_interaction(image_tokens, recipe_tokens)


def pad_tokens(recipe_tokens: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length token sets to [N, S, D] float32 plus a [N, S] validity mask (True = real)."""
    s = max(1, max((len(t) for t in recipe_tokens), default=1))
    tokens = np.zeros((len(recipe_tokens), s, dim), np.float32)
    mask = np.zeros((len(recipe_tokens), s), bool)
    for i, t in enumerate(recipe_tokens):
        tokens[i, :len(t)] = t
        mask[i, :len(t)] = True
    return tokens, mask


def fuse(global_scores: np.ndarray, local_scores: np.ndarray, weight: float) -> np.ndarray:
    return (1.0 - weight) * np.asarray(global_scores, np.float32) + weight * np.asarray(local_scores, np.float32)


def disabled_reason(settings: RerankSettings) -> str | None:
    """Why re-ranking ships switched off (`settings.enabled` False), from the section's "disabled_reason"."""
    reason = settings.extra.get("disabled_reason")
    return None if settings.enabled else str(reason or "switched off when the bundle was made")


def calibration(settings: RerankSettings) -> dict[str, object] | None:
    """How the export chose `weight` (the section's "calibration": malm/export/rerank_calibration.py), or None."""
    cal = settings.extra.get("calibration")
    return dict(cal) if isinstance(cal, Mapping) else None


def check_section(settings: RerankSettings, where: str) -> None:
    """The keys the SDK reads beyond the typed ones, checked like the rest of an untrusted manifest."""
    extra = settings.extra
    if not isinstance(settings.enabled, bool) or not isinstance(extra.get("disabled_reason") or "", str) \
            or not isinstance(extra.get("calibration") or {}, Mapping):
        raise BundleError(f"{where}: bad rerank section in the manifest ('enabled' must be true or false, "
                          "'disabled_reason' a string, 'calibration' an object)")
