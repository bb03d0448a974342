"""H-T's recipe self-supervision: each of title, ingredients, instructions predicts the others."""

from __future__ import annotations

from torch import Tensor

from malm.training.config import LossConfig
from malm.training.losses.recipe_ssl import RecipeSelfSupervisedLoss
from malm.training.objectives.base import Objective, TaskState


class RecipeSSLObjective(Objective):
    """H-T's self-supervised loss between the recipe's title, ingredients and instructions."""

    def __init__(self, cfg: LossConfig, recipe_width: int) -> None:
        super().__init__()
        self.weight = cfg.recipe_ssl_weight
        self.loss = RecipeSelfSupervisedLoss(recipe_width, margin=cfg.triplet_margin)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        r = state.recipe
        loss = self.loss({"title": r.title, "ingredients": r.ingredients, "instructions": r.instructions})
        return {"recipe_ssl_loss": self.weight * loss}
