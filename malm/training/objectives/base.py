"""What every objective shares: the per-step `TaskState`, the `Objective` interface, and the image token
sequence matching / caption / distillation objectives read.

With mask augmentation on (`loss.mask`), the task encodes only the visible patches; `image_tokens` below
re-inserts the ViT's mask token at the hidden positions, so matching sees (and matches text against) the
mask tokens, as MALM does. The teacher always sees the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from malm.training.distributed import all_gather_with_grad
from malm.training.losses.infonce import Gather
from malm.training.models.recipe import RecipeFeatures
from malm.training.models.retrieval import RetrievalModel
from malm.training.models.vit import ImageFeatures


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
    # CPU generator for objectives' own sampling (hard negatives), seeded per rank and step by the task.
    generator: torch.Generator | None = None
    # Whole-image features when `image` is a masked pass and the task also encoded the whole image
    # (loss.mask.full_image_retrieval); None otherwise. See `whole_image`.
    full_image: ImageFeatures | None = None


def whole_image(state: TaskState) -> ImageFeatures | None:
    """The whole-image features of this step (what the encoder sees at test time), or None when the step only
    encoded a masked view."""
    if state.image.keep_idx is None:
        return state.image
    return state.full_image


class Objective(nn.Module):
    """One training objective: `forward(state) -> {name: tensor}`; `*_loss` keys must be weighted scalars.

    `retrieval`: this objective trains the global retrieval embedding (the triplet or InfoNCE), so its losses
    have their full weight from step 0; every other objective is an auxiliary that `loss.aux_warmup_epochs` ramps in.
    """

    retrieval: ClassVar[bool] = False

    def forward(self, state: TaskState) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self, model: RetrievalModel) -> None:
        """Called after every optimizer step (e.g. to update an EMA teacher)."""


def image_tokens(state: TaskState) -> Tensor:
    """[CLS] + all P patch tokens [B, 1+P, W]; mask tokens at the masked positions (computed once per step)."""
    if "image_tokens" not in state.shared:
        tokens = state.image.tokens
        if state.image.keep_idx is not None:
            tokens = state.model.image_encoder.fill_masked(tokens, state.image.keep_idx)
        state.shared["image_tokens"] = torch.cat([state.image.cls.unsqueeze(1), tokens], dim=1)
    return state.shared["image_tokens"]


def gather_and_rank() -> tuple[Gather | None, int]:
    """The differentiable all-gather and this rank under DDP; (None, 0) in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return all_gather_with_grad, dist.get_rank()
    return None, 0
