"""TNLBT's cross decoder: fuse image tokens with recipe features and generate the title (cross-entropy)."""

from __future__ import annotations

from torch import Tensor

from malm.errors import MalmError
from malm.training.config import ExperimentConfig
from malm.training.losses.caption import CaptionLoss
from malm.training.models.cross_decoder import CrossDecoder
from malm.training.objectives.base import Objective, TaskState, image_tokens


class CrossDecoderObjective(Objective):
    def __init__(self, config: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        cd = config.loss.cross_decoder
        if config.model.recipe.sentence_features != "learned":
            raise MalmError(
                "loss.cross_decoder generates title words and needs word tokens; it does not work with "
                "model.recipe.sentence_features='minilm'"
            )
        self.weight = cd.weight
        self.decoder = CrossDecoder(
            image_width=config.model.image.width,
            recipe_width=config.model.recipe.width,
            vocab_size=vocab_size,
            max_len=config.data.max_title_tokens,
            dim=config.model.recipe.width,
            fusion_depth=1,
            decoder_depth=cd.layers,
            heads=cd.heads,
        )
        self.loss = CaptionLoss(pad_id=0)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        r = state.recipe
        logits, targets = self.decoder(image_tokens(state), r.tokens, r.token_mask, state.batch["title"])
        return {"caption_loss": self.weight * self.loss(logits, targets)}
