"""MALM's masked self-distillation loss: Smooth-L1 between the predictor's outputs at the masked patches
and the EMA teacher's features there, normalized per token and with the gradient stopped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from malm.errors import MalmError


def normalize_targets(target: torch.Tensor) -> torch.Tensor:
    """Per-token layer norm without affine parameters (the data2vec / MaskFeat target normalization):
    the student matches the teacher's feature pattern, not its drifting scale."""
    return F.layer_norm(target.float(), target.shape[-1:])


class MaskedDistillLoss(nn.Module):
    def __init__(self, beta: float = 1.0, normalize: bool = True) -> None:
        super().__init__()
        if not beta > 0:
            raise MalmError(f"Smooth-L1 beta must be > 0, got {beta}")
        self.beta = beta
        self.normalize = normalize

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`prediction`, `target`: [B, M, D] at the masked positions; mean over all elements."""
        if prediction.shape != target.shape:
            raise MalmError(
                f"distillation prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
            )
        if prediction.numel() == 0:
            return prediction.sum() * 0.0
        target = target.detach()  # stop-gradient: the teacher only moves by EMA
        if self.normalize:
            target = normalize_targets(target)
        return F.smooth_l1_loss(prediction.float(), target.float(), beta=self.beta)
