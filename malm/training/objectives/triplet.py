"""The bidirectional triplet on the global embeddings (H-T), and TNLBT's dynamic-margin variant."""

from __future__ import annotations

import torch
from torch import Tensor

from malm.training.config import LossConfig
from malm.training.losses.margin_schedule import MarginSchedule
from malm.training.losses.triplet import TripletLoss
from malm.training.objectives.base import Objective, TaskState


class TripletObjective(Objective):
    """Bidirectional triplet loss on the global embeddings, all negatives of the global batch."""

    retrieval = True

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.loss = TripletLoss(margin=cfg.triplet_margin, hard_negative=cfg.hard_negative,
                                reduction=cfg.triplet_reduction)

    def margin(self, progress: float) -> float:
        """The margin at this point of training (fixed for H-T; TNLBT's dynamic margins change this)."""
        return self.cfg.triplet_margin

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        m = self.margin(state.progress)
        loss = self.loss(state.all_image_emb, state.all_recipe_emb, margin=m)
        return {"triplet_loss": self.cfg.retrieval_weight * loss, "margin": torch.tensor(m)}


class DynamicMarginTriplet(TripletObjective):
    """TNLBT's dynamic margins: the triplet margin grows from `start` to `end` over training."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__(cfg)
        m = cfg.dynamic_margin
        # config "step" = two levels (start for the first half, end after): MarginSchedule's default.
        self.schedule = MarginSchedule(start=m.start, end=m.end, kind=m.schedule)

    def margin(self, progress: float) -> float:
        return self.schedule(progress)
