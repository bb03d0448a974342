"""The symmetric InfoNCE retrieval loss on the global embeddings (CLIP's), instead of the triplet.

`loss.retrieval = "infonce"`: each image against every recipe of the global batch (and each recipe against
every image), softmax over cosine / `loss.infonce_temperature`. Not part of H-T, TNLBT or MALM (they train
their retrieval embedding with the triplet); it is an option because on the CPU budgets this project
measures it learns far faster than the triplet (docs/ablation.md, "Retrieval loss"), and it is what the
demo's preset uses.
"""

from __future__ import annotations

from torch import Tensor

from malm.training.config import LossConfig
from malm.training.losses.infonce import symmetric_infonce
from malm.training.objectives.base import Objective, TaskState, gather_and_rank


class ContrastiveRetrieval(Objective):
    """Symmetric InfoNCE between the image and recipe embeddings, all negatives of the global batch."""

    retrieval = True

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        gather, rank = gather_and_rank()
        loss = symmetric_infonce(state.image_emb, state.recipe_emb, self.cfg.infonce_temperature, gather, rank)
        return {"infonce_loss": self.cfg.retrieval_weight * loss}
