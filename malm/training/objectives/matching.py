"""MALM's matching decoder ψ / ψ′ as a training objective, one class per `loss.matching.mode`:

    "itm" (default)  `matching_itm.ItmMatching`: image-grounded matching with sampled hard negatives
    "paper"          `matching_paper.PaperMatching`: the paper's positive-pair InfoNCE terms, kept for the record

`build_objectives` picks the one the config names; both own the decoder built here as `self.matching`
(so saved weights and `malm.export.matching_head` read the same names whatever the mode).
"""

from __future__ import annotations

from malm.training.config import ExperimentConfig
from malm.training.models.matching import MatchingModule


def matching_decoder(config: ExperimentConfig) -> MatchingModule:
    """The decoder (and, in mode "itm", its matched / not-matched head and late-interaction projections)."""
    mc = config.loss.matching
    return MatchingModule(
        image_width=config.model.image.width,
        recipe_width=config.model.recipe.width,
        dim=config.model.recipe.width,
        depth=mc.layers,
        heads=mc.heads,
        itm_head=mc.mode == "itm",
        late_dim=config.model.embed_dim if mc.mode == "itm" and mc.local_score == "late" else 0,
        late_temperature=mc.temperature,
    )
