"""Pull the student's embedding onto the frozen teacher's: mean of (1 - cosine)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingCosineLoss(nn.Module):
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student, teacher: [B, D] (any norm) → scalar in [0, 2]."""
        return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()
