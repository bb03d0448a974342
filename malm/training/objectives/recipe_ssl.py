"""H-T's recipe self-supervision: each of title, ingredients, instructions predicts the others.

With `train.recipe_only_batch` the batch also carries recipes without photos (`ro_title`, `ro_ingredients`,
`ro_instructions`, drawn by the train loop); they are encoded here and join the paired recipes in this loss
only, as H-T trains its recipe losses on Recipe1M's many image-less recipes too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from malm.training.config import LossConfig
from malm.training.losses.recipe_ssl import RecipeSelfSupervisedLoss
from malm.training.objectives.base import Objective, TaskState


class RecipeSSLObjective(Objective):
    """H-T's self-supervised loss between the recipe's title, ingredients and instructions."""

    def __init__(self, cfg: LossConfig, recipe_width: int) -> None:
        super().__init__()
        self.weight = cfg.recipe_ssl_weight
        self.loss = RecipeSelfSupervisedLoss(recipe_width, margin=cfg.triplet_margin, reduction=cfg.triplet_reduction)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        r = state.recipe
        parts = {"title": r.title, "ingredients": r.ingredients, "instructions": r.instructions}
        out: dict[str, Tensor] = {}
        if "ro_title" in state.batch:
            b = state.batch
            extra = state.model.recipe_features(b["ro_title"], b["ro_ingredients"], b["ro_instructions"])
            parts = {k: torch.cat([v, getattr(extra, k)]) for k, v in parts.items()}
            out["recipe_only_n"] = torch.tensor(float(len(b["ro_title"])))
        return out | {"recipe_ssl_loss": self.weight * self.loss(parts)}
