"""The training objectives, one module each, and `build_objectives`: the config → the list the task runs.

    triplet.py        TripletObjective (H-T), DynamicMarginTriplet (TNLBT's margin schedule)
    contrastive.py    ContrastiveRetrieval (CLIP's symmetric InfoNCE; loss.retrieval = "infonce")
    recipe_ssl.py     RecipeSSLObjective (H-T)
    cross_decoder.py  CrossDecoderObjective (TNLBT)
    matching_itm.py   ItmMatching (MALM's matching decoder, loss.matching.mode "itm")
    matching_paper.py PaperMatching (the paper's matching InfoNCE, mode "paper"); matching.py their decoder
    self_distill.py   SelfDistillObjective (MALM's masked self-distillation, needs loss.mask)
    base.py           TaskState (what the task computes once per step), Objective, image_tokens

An objective reads the state and returns named tensors: keys ending in `_loss` are already weighted and
summed into the total, the rest are logged. Each loss has one switch, its weight (0 = off; loss_config.py). Adding one = a module here, its config field, and one line
below (docs/architecture.md, "Add a loss"). The order below is the order of `task.objectives.<i>` in
saved training states: append, never reorder.
"""

from __future__ import annotations

from malm.errors import MalmError
from malm.training.config import ExperimentConfig
from malm.training.models.retrieval import RetrievalModel
from malm.training.objectives.base import Objective, TaskState, image_tokens
from malm.training.objectives.contrastive import ContrastiveRetrieval
from malm.training.objectives.cross_decoder import CrossDecoderObjective
from malm.training.objectives.matching_itm import ItmMatching
from malm.training.objectives.matching_paper import PaperMatching
from malm.training.objectives.recipe_ssl import RecipeSSLObjective
from malm.training.objectives.self_distill import SelfDistillObjective
from malm.training.objectives.triplet import DynamicMarginTriplet, TripletObjective

__all__ = [
    "ContrastiveRetrieval", "CrossDecoderObjective", "DynamicMarginTriplet", "ItmMatching", "Objective",
    "PaperMatching", "RecipeSSLObjective", "SelfDistillObjective", "TaskState", "TripletObjective",
    "build_objectives", "image_tokens",
]


def build_objectives(config: ExperimentConfig, model: RetrievalModel) -> list[Objective]:
    loss = config.loss
    if loss.self_distill.enabled and not loss.mask.enabled:
        raise MalmError(
            f"config {config.name!r}: loss.self_distill needs loss.mask.enabled (the teacher's features are "
            "predicted at the masked patches); for the no-mask ablation set loss.self_distill.weight=0 too"
        )
    objectives: list[Objective] = []
    if loss.retrieval_weight > 0 and loss.retrieval == "infonce":
        objectives.append(ContrastiveRetrieval(loss))
    elif loss.retrieval_weight > 0:
        objectives.append(DynamicMarginTriplet(loss) if loss.dynamic_margin.enabled else TripletObjective(loss))
    if loss.recipe_ssl_weight > 0:
        objectives.append(RecipeSSLObjective(loss, config.model.recipe.width))
    if loss.cross_decoder.enabled:
        objectives.append(CrossDecoderObjective(config, model.vocab_size))
    if loss.matching.enabled:
        objectives.append(ItmMatching(config) if loss.matching.mode == "itm" else PaperMatching(config))
    if loss.self_distill.enabled:
        objectives.append(SelfDistillObjective(config, model))
    if not objectives:
        raise MalmError(f"config {config.name!r}: every loss weight is 0, nothing to train")
    return objectives
