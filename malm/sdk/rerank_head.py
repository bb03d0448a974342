"""What `Retriever` re-ranks with: the exported matching head as a local scorer, and one photo's candidates with
their global and local scores (`Retriever.candidate_scores`, which export calibrates the fusion weight on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from malm.edge_index.rerank import fuse, pad_tokens
from malm.errors import BundleError, MalmError
from malm.sdk.backends.ort import OrtSession


class MatchingHeadScorer:
    """A trained matching head exported to ONNX (`malm.training.models.matching.export_matching_onnx`):
    `image_tokens` [N,1+P,Wi], `recipe_tokens` [N,S,Wr], `recipe_mask` [N,S] bool → `score` [N], pairwise
    (image n with recipe n), so the photo's tokens are repeated once per candidate."""

    def __init__(self, session: OrtSession, dim: int) -> None:
        need = {"image_tokens", "recipe_tokens", "recipe_mask"}
        if need - set(session.input_names) or "score" not in session.output_names:
            raise BundleError(f"matching head {session.path}: expected inputs {sorted(need)} and output 'score'")
        self.session = session
        self.dim = dim
        p = session.input_shape("image_tokens")[1]
        self.n_image_tokens = p if isinstance(p, int) else None
        meta = session.session.get_modelmeta().custom_metadata_map
        # "mean": the head builds its [CLS] from the patches itself (malm export --tokens); otherwise it reads
        # [CLS] + patches and we build the same stand-in here.
        self.takes_patches = meta.get("global_token") == "mean"
        # A late-interaction head scores each pair from the two token sets alone: its graph broadcasts one
        # photo over the N candidates (checked at export), so the photo's tokens are projected once, not N times.
        self.broadcast_image = meta.get("score") == "late_interaction" and self.takes_patches

    def __call__(self, image_tokens: np.ndarray, recipe_tokens: Sequence[np.ndarray]) -> np.ndarray:
        tokens, mask = pad_tokens(recipe_tokens, self.dim)
        img = np.asarray(image_tokens, np.float32)
        if not self.takes_patches and (self.n_image_tokens is None or self.n_image_tokens == len(img) + 1):
            # The head reads [CLS] + patches; the image ONNX gives patches only: their mean stands in for [CLS].
            img = np.concatenate([img.mean(axis=0, keepdims=True), img], axis=0)
        if self.n_image_tokens is not None and self.n_image_tokens != len(img):
            raise MalmError(f"matching head {self.session.path} expects {self.n_image_tokens} image tokens, "
                            f"the image encoder gives {len(image_tokens)}")
        image = img[None] if self.broadcast_image else np.repeat(img[None], len(recipe_tokens), axis=0)
        out = self.session.run({"image_tokens": image, "recipe_tokens": tokens, "recipe_mask": mask}, ["score"])
        return np.asarray(out["score"], np.float32).reshape(-1)


@dataclass(frozen=True)
class Candidates:
    """One photo's global top candidates as re-ranking sees them (`Retriever.candidate_scores`)."""

    recipe_ids: tuple[str, ...]  # in global order
    global_scores: np.ndarray  # [N] cosine
    local_scores: np.ndarray  # [N] the bundle's local scorer (matching head or late interaction)

    def order(self, weight: float) -> list[str]:
        """The recipe ids as `search(rerank=True)` ranks them with fusion `weight` (0 = global order)."""
        fused = fuse(self.global_scores, self.local_scores, weight)
        return [self.recipe_ids[i] for i in np.argsort(-fused, kind="stable")]
