"""One module per loss: each an nn.Module with a seeded reference test in tests/."""

from malm.training.losses.recipe_ssl import RecipeSelfSupervisedLoss
from malm.training.losses.triplet import TripletLoss

__all__ = ["RecipeSelfSupervisedLoss", "TripletLoss"]
