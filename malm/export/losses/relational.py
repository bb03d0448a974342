"""Keep the teacher's ranking of recipes: KL(teacher ‖ student) over softmax similarities to recipe embeddings.

Matching embeddings one by one (cosine) leaves the residual error free to reorder near neighbours; this
term spends capacity where retrieval needs it: the relative order of candidate recipes for each photo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RelationalRankingLoss(nn.Module):
    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"relational loss: temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, recipes: torch.Tensor) -> torch.Tensor:
        """student, teacher: [B, D] L2-normalized image embeddings; recipes: [K, D] L2-normalized (teacher)."""
        recipes = recipes.detach()
        log_p_student = F.log_softmax(student @ recipes.T / self.temperature, dim=-1)
        p_teacher = F.softmax(teacher.detach() @ recipes.T / self.temperature, dim=-1)
        # batchmean KL, scaled by T^2 so its gradient size does not depend on the temperature (Hinton et al.)
        return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * self.temperature**2
