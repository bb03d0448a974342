"""Token distillation for re-ranking: the student's feature-map tokens match the teacher's patch tokens,
pooled onto the student's coarser grid (the ViT sees 16-px patches, the CNN's last map is stride 32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, P, W] on a square grid → [B, gh*gw, W] by adaptive average pooling."""
    b, p, w = tokens.shape
    side = int(round(p**0.5))
    if side * side != p:
        raise ValueError(f"token distillation needs a square patch grid, got {p} tokens")
    fmap = tokens.transpose(1, 2).reshape(b, w, side, side)
    return F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)


class TokenCosineLoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """student: [B, gh*gw, W]; teacher: [B, P, W] (square grid) → mean (1 - cosine) per token."""
        target = pool_tokens(teacher.detach(), grid)
        return (1.0 - F.cosine_similarity(student, target, dim=-1)).mean()
