"""The training task: the retrieval model plus the objectives the config turns on.

    task = Task(config, vocab_size=len(vocab))
    losses, report = task(batch, progress)          # == task.training_forward(...)
    total = Task.total(losses)                      # sum of the "*_loss" entries
    total.backward(); optimizer.step(); task.after_step()

The forward pass computes what every objective may need once, into a `TaskState` (image features with
their visible-patch indices, recipe features, global embeddings, the global batch gathered across ranks,
training progress). The objectives (`malm.training.objectives`, one module each) are built from the config
by `build_objectives`; each reads the state and returns named tensors: keys ending in `_loss` are already
weighted and summed into the total, the rest are logged. `after_step` runs after each optimizer step
(EMA teachers).

Randomness of the task itself (which patches are masked, which hard negatives are sampled) comes from its own
CPU generator, seeded from (train.seed, rank, step) by `seed_step`: every DDP rank draws different masks
(the global RNG is seeded identically on every rank) and a resumed run draws what the uninterrupted one would.
Every loss but the retrieval objective's (`Objective.retrieval`: the triplet or InfoNCE) is scaled by
`loss.aux_ramp` (a linear ramp over `loss.aux_warmup_epochs`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from malm.training.config import ExperimentConfig, TrainConfig
from malm.training.distributed import all_gather_with_grad
from malm.training.models.retrieval import RetrievalModel
from malm.training.models.vit import random_keep_idx
from malm.training.objectives import TaskState, build_objectives


def step_seed(seed: int, rank: int, step: int) -> int:
    """A distinct 63-bit seed per (seed, rank, step)."""
    return ((seed * 1_000_003 + rank * 7_919 + 1) * 2_654_435_761 + step) & (2**63 - 1)


class Task(nn.Module):
    def __init__(self, config: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.model = RetrievalModel(config.model, vocab_size)
        self.objectives = nn.ModuleList(build_objectives(config, self.model))
        self.rank = 0
        self.generator = torch.Generator()
        self.seed_step(0)

    def seed_step(self, step: int, rank: int | None = None) -> None:
        """Seed the task's generator for `step` on this rank (the train loop calls it before every step)."""
        if rank is not None:
            self.rank = rank
        self.generator.manual_seed(step_seed(self.config.train.seed, self.rank, step))

    def keep_idx(self, batch_size: int, device: torch.device) -> Tensor | None:
        """Visible patches for mask augmentation (MALM), or None to encode the whole image."""
        if not (self.training and self.config.loss.mask.enabled):
            return None
        return random_keep_idx(batch_size, self.model.image_encoder.num_patches, self.config.loss.mask.ratio, device,
                               generator=self.generator)

    def forward(self, batch: dict[str, Tensor], progress: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return self.training_forward(batch, progress)

    def training_forward(self, batch: dict[str, Tensor], progress: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        images = batch["image"]
        keep = self.keep_idx(images.shape[0], images.device)
        image = self.model.image_features(images, keep)
        recipe = self.model.recipe_features(batch["title"], batch["ingredients"], batch["instructions"])
        cls, full_image = image.cls, None
        if keep is not None and self.config.loss.mask.full_image_retrieval:
            # The global embedding as at test time (whole image); the masked pass feeds matching/distillation.
            full_image = self.model.image_features(images)
            cls = full_image.cls
        image_emb = self.model.project_image(cls)
        recipe_emb = F.normalize(recipe.embedding.float(), dim=-1)
        state = TaskState(batch=batch, progress=progress, model=self.model, image=image, recipe=recipe,
                          image_emb=image_emb, recipe_emb=recipe_emb,
                          all_image_emb=all_gather_with_grad(image_emb),
                          all_recipe_emb=all_gather_with_grad(recipe_emb), generator=self.generator,
                          full_image=full_image)
        losses: dict[str, Tensor] = {}
        report: dict[str, Tensor] = {}  # detached, on the device: the train loop reads them every log_every steps
        ramp = self.config.loss.aux_ramp(progress * self.config.train.epochs)
        for objective in self.objectives:
            # Auxiliaries ramp in; the retrieval objective (triplet or InfoNCE) has its full weight from step 0.
            scale = 1.0 if objective.retrieval else ramp
            for key, value in objective(state).items():
                if key.endswith("_loss"):
                    # The report keeps the unramped value, so curves show the loss itself.
                    losses[key] = value if scale == 1.0 else value * scale
                report[key] = value.detach()
        if ramp != 1.0:
            report["aux_ramp"] = torch.tensor(ramp)
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

        Each group carries `base_lr` (the peak) and `kind` ("image", "stem" -- a hybrid's pretrained CNN at
        `stem_lr` -- or "other") for the scheduler and freezing.
        """
        backbone = {id(p) for p in self.model.image_backbone_parameters()}
        stem = {id(p) for p in self.model.image_stem_parameters()}
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            kind = "stem" if id(p) in stem else "image" if id(p) in backbone else "other"
            no_decay = p.ndim < 2 or name.endswith(("cls_token", "pos_embed", "mask_token")) or "word_embed" in name
            buckets.setdefault((kind, not no_decay), []).append(p)
        groups = []
        for (kind, decay), params in sorted(buckets.items()):
            base = {"image": train.image_lr, "stem": train.stem_lr}.get(kind, train.lr)
            groups.append({"params": params, "lr": base, "base_lr": base, "kind": kind,
                           "weight_decay": train.weight_decay if decay else 0.0})
        return groups
