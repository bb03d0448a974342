"""H-T's recipe self-supervised loss between title, ingredients and instructions.

Each pooled component vector of a recipe should identify the other components of the same recipe among
the batch: for every ordered pair (a -> b) of the three components, a small projection head maps a into
b's space and a bidirectional triplet loss (cosine, in-batch negatives) pulls the projected a towards b.
The loss is the mean over the six ordered pairs.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from malm.training.losses.triplet import TripletLoss, at_least_fp32

COMPONENTS = ("title", "ingredients", "instructions")


class RecipeSelfSupervisedLoss(nn.Module):
    def __init__(self, width: int, margin: float = 0.3, reduction: str = "violating") -> None:
        super().__init__()
        self.pairs = list(itertools.permutations(COMPONENTS, 2))
        self.heads = nn.ModuleDict({f"{a}_to_{b}": nn.Linear(width, width) for a, b in self.pairs})
        self.triplet = TripletLoss(margin=margin, reduction=reduction)

    def forward(self, components: dict[str, Tensor]) -> Tensor:
        """components: {"title", "ingredients", "instructions"} -> [B, W] pooled vectors of one recipe batch."""
        total = torch.zeros((), device=components["title"].device)
        for a, b in self.pairs:
            src = F.normalize(at_least_fp32(self.heads[f"{a}_to_{b}"](components[a])), dim=-1)
            dst = F.normalize(at_least_fp32(components[b]), dim=-1)
            total = total + self.triplet(src, dst)
        return total / len(self.pairs)
