"""Bidirectional triplet loss on cosine distance with in-batch negatives (AdaMine / H-T).

For image i and its recipe i, every other recipe j is a negative: cost(i, j) = max(0, m + s(i, j) - s(i, i))
with s the cosine similarity (so d = 1 - s and the margin acts on distances). The same for recipe
anchors. How the costs are averaged (`reduction`):

- "all": the mean over all B x B entries, the positives' zeros included -- H-T's loss
  (amzn/image-to-recipe-transformers, src/utils/loss.py). Once most negatives are easy the loss and its
  gradient shrink, so auxiliary losses weigh relatively more.
- "violating": the mean over the triplets that still violate the margin (AdaMine; T-Food): easy negatives do
  not dilute the gradient, the loss stays O(margin) as training goes on.

`hard_negative=True` keeps only the hardest negative per anchor (VSE++) and ignores `reduction`. The loss is
the sum of the image->recipe and recipe->image terms.

`margin` can be passed per call, so a schedule (TNLBT's dynamic margins) can drive it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def at_least_fp32(x: Tensor) -> Tensor:
    # Losses run in fp32 under bf16 autocast; float64 (reference tests) stays float64.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class TripletLoss(nn.Module):
    def __init__(self, margin: float = 0.3, hard_negative: bool = False, reduction: str = "violating") -> None:
        super().__init__()
        if reduction not in ("all", "violating"):
            raise ValueError(f"triplet reduction must be 'all' or 'violating', got {reduction!r}")
        self.margin = margin
        self.hard_negative = hard_negative
        self.reduction = reduction

    def _direction(self, scores: Tensor, margin: float) -> Tensor:
        """scores [A, C] with the positive of anchor a at column a: one direction of the loss."""
        n = scores.shape[0]
        positive = scores.diagonal().unsqueeze(1)
        cost = (margin + scores - positive).clamp(min=0)
        cost = cost.masked_fill(torch.eye(n, dtype=torch.bool, device=scores.device), 0.0)
        if self.hard_negative:
            return cost.max(dim=1).values.mean()
        if self.reduction == "all":
            return cost.mean()
        # Average over violating triplets only; count is a constant for the gradient.
        count = (cost > 0).sum().clamp(min=1)
        return cost.sum() / count

    def forward(self, image_emb: Tensor, recipe_emb: Tensor, margin: float | None = None) -> Tensor:
        """image_emb, recipe_emb: [B, D] L2-normalized, row i paired with row i."""
        m = self.margin if margin is None else margin
        scores = at_least_fp32(image_emb) @ at_least_fp32(recipe_emb).t()
        return self._direction(scores, m) + self._direction(scores.t(), m)
