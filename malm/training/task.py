"""The training task: the retrieval model plus the objectives the config turns on.

    task = Task(config, vocab_size=len(vocab))
    losses, report = task(batch, progress)          # == task.training_forward(...)
    total = Task.total(losses)                      # sum of the "*_loss" entries
    total.backward(); optimizer.step(); task.after_step()

The forward pass computes what every objective may need once, into a `TaskState` (image features with
their visible-patch indices, recipe features, global embeddings, the global batch gathered across ranks,
training progress). Each objective is an `Objective` module built from the config by
`build_objectives`; it reads the state and returns named tensors: keys ending in `_loss` are already
weighted and summed into the total, the rest are logged. Adding a method = adding an objective class
and one line in `build_objectives`. `after_step` runs after each optimizer step (EMA teachers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from malm.errors import MalmError
from malm.training.config import ExperimentConfig, LossConfig, TrainConfig
from malm.training.distributed import all_gather_with_grad
from malm.training.losses.recipe_ssl import RecipeSelfSupervisedLoss
from malm.training.losses.triplet import TripletLoss
from malm.training.models.recipe import RecipeFeatures
from malm.training.models.retrieval import RetrievalModel
from malm.training.models.vit import ImageFeatures, random_keep_idx


@dataclass
class TaskState:
    batch: dict[str, Tensor]  # the collated batch (image, title, ingredients, instructions, index)
    progress: float  # fraction of training done, in [0, 1] (for schedules such as dynamic margins)
    model: RetrievalModel  # the (unwrapped) model, for objectives that need e.g. fill_masked
    image: ImageFeatures  # student image features; image.keep_idx is set when mask augmentation is on
    recipe: RecipeFeatures  # recipe features incl. component tokens and pooled components
    image_emb: Tensor  # [B, D] L2-normalized image embeddings of this rank
    recipe_emb: Tensor  # [B, D] L2-normalized recipe embeddings of this rank
    all_image_emb: Tensor  # [world*B, D] gathered over ranks with gradient (== image_emb without DDP)
    all_recipe_emb: Tensor  # [world*B, D]
    shared: dict[str, Any] = field(default_factory=dict)  # objectives may cache things for later objectives


class Objective(nn.Module):
    """One training objective: `forward(state) -> {name: tensor}`; `*_loss` keys must be weighted scalars."""

    def forward(self, state: TaskState) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self, model: RetrievalModel) -> None:
        """Called after every optimizer step (e.g. to update an EMA teacher)."""


class TripletObjective(Objective):
    """Bidirectional triplet loss on the global embeddings, all negatives of the global batch."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.loss = TripletLoss(margin=cfg.triplet_margin, hard_negative=cfg.hard_negative)

    def margin(self, progress: float) -> float:
        """The margin at this point of training (fixed for H-T; TNLBT's dynamic margins change this)."""
        return self.cfg.triplet_margin

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        m = self.margin(state.progress)
        loss = self.loss(state.all_image_emb, state.all_recipe_emb, margin=m)
        return {"triplet_loss": self.cfg.triplet_weight * loss, "margin": torch.tensor(m)}


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


def build_objectives(config: ExperimentConfig, model: RetrievalModel) -> list[Objective]:
    loss = config.loss
    objectives: list[Objective] = []
    # TNLBT / MALM objectives live in objectives.py (imported here: it builds on this module's classes).
    from malm.training.objectives import DynamicMarginTriplet, method_objectives

    if loss.triplet_weight > 0:
        objectives.append(DynamicMarginTriplet(loss) if loss.dynamic_margin.enabled else TripletObjective(loss))
    if loss.recipe_ssl_weight > 0:
        objectives.append(RecipeSSLObjective(loss, config.model.recipe.width))
    objectives += method_objectives(config, model)
    if not objectives:
        raise MalmError(f"config {config.name!r}: every loss weight is 0, nothing to train")
    return objectives


class Task(nn.Module):
    def __init__(self, config: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.model = RetrievalModel(config.model, vocab_size)
        self.objectives = nn.ModuleList(build_objectives(config, self.model))

    def keep_idx(self, batch_size: int, device: torch.device) -> Tensor | None:
        """Visible patches for mask augmentation (MALM), or None to encode the whole image."""
        if not (self.training and self.config.loss.mask.enabled):
            return None
        return random_keep_idx(batch_size, self.model.image_encoder.num_patches, self.config.loss.mask.ratio, device)

    def forward(self, batch: dict[str, Tensor], progress: float) -> tuple[dict[str, Tensor], dict[str, float]]:
        return self.training_forward(batch, progress)

    def training_forward(self, batch: dict[str, Tensor], progress: float) -> tuple[dict[str, Tensor], dict[str, float]]:
        images = batch["image"]
        keep = self.keep_idx(images.shape[0], images.device)
        image = self.model.image_features(images, keep)
        recipe = self.model.recipe_features(batch["title"], batch["ingredients"], batch["instructions"])
        cls = image.cls
        if keep is not None and self.config.loss.mask.full_image_triplet:
            # The global embedding as at test time (whole image); the masked pass feeds matching/distillation.
            cls = self.model.image_features(images).cls
        image_emb = self.model.project_image(cls)
        recipe_emb = F.normalize(recipe.embedding.float(), dim=-1)
        state = TaskState(batch=batch, progress=progress, model=self.model, image=image, recipe=recipe,
                          image_emb=image_emb, recipe_emb=recipe_emb,
                          all_image_emb=all_gather_with_grad(image_emb),
                          all_recipe_emb=all_gather_with_grad(recipe_emb))
        losses: dict[str, Tensor] = {}
        report: dict[str, float] = {}
        for objective in self.objectives:
            for key, value in objective(state).items():
                if key.endswith("_loss"):
                    losses[key] = value
                report[key] = float(value.detach().float())
        return losses, report

    @staticmethod
    def total(losses: dict[str, Tensor]) -> Tensor:
        return sum(v for k, v in losses.items() if k.endswith("_loss"))  # type: ignore[return-value]

    @torch.no_grad()
    def after_step(self) -> None:
        for objective in self.objectives:
            objective.after_step(self.model)  # type: ignore[operator]

    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """AdamW groups: image backbone at `image_lr`, the rest at `lr`; no decay on norms, biases, embeddings.

        Each group carries `base_lr` (the peak) and `kind` ("image" or "other") for the scheduler and freezing.
        """
        backbone = {id(p) for p in self.model.image_backbone_parameters()}
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            kind = "image" if id(p) in backbone else "other"
            no_decay = p.ndim < 2 or name.endswith(("cls_token", "pos_embed", "mask_token")) or "word_embed" in name
            buckets.setdefault((kind, not no_decay), []).append(p)
        groups = []
        for (kind, decay), params in sorted(buckets.items()):
            base = train.image_lr if kind == "image" else train.lr
            groups.append({"params": params, "lr": base, "base_lr": base, "kind": kind,
                           "weight_decay": train.weight_decay if decay else 0.0})
        return groups
