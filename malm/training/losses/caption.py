"""TNLBT's cross-decoder loss: teacher-forced cross-entropy on the recipe title, padding ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from malm.errors import MalmError


class CaptionLoss(nn.Module):
    def __init__(self, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id = pad_id

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`logits` [B, T, V] predicting `targets` [B, T] (int); mean over non-pad target tokens."""
        if logits.dim() != 3 or logits.shape[:2] != targets.shape:
            raise MalmError(
                f"caption loss expects logits [B,T,V] and targets [B,T], got {tuple(logits.shape)}, "
                f"{tuple(targets.shape)}"
            )
        # The mean over non-pad tokens, written as sum / count so no branch reads the batch on the host
        # (a sync per step on a GPU); an all-padding batch gives 0 with the graph kept, not a NaN.
        total = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten().long(), ignore_index=self.pad_id, reduction="sum"
        )
        return total / (targets != self.pad_id).sum().clamp(min=1)
