"""The `loss` section of an experiment config: one switch per loss, its weight (0 = off).

    retrieval_weight        the retrieval loss on the global embeddings; `retrieval` picks its form
                            ("triplet": H-T / TNLBT / MALM, "infonce": CLIP's symmetric InfoNCE)
    recipe_ssl_weight       H-T's recipe self-supervision
    cross_decoder.weight    TNLBT's title-generating decoder
    matching.global_weight  MALM's matching decoder (its global term; `local_weight` the per-patch term;
                            the decoder is built when either is > 0)
    self_distill.weight     MALM's masked self-distillation from an EMA teacher (not the export student's
                            distillation, `malm.export.distill`)

Options of a loss (`dynamic_margin`, `mask`, `matching.mode`) keep their own settings. Configs written before
these names load through `malm.training.config.upgrade_config_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from malm.errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class DynamicMarginConfig:
    enabled: bool = False  # TNLBT: grow the triplet margin over training (an option of the triplet, not a loss)
    start: float = 0.05  # margin at progress 0
    end: float = 0.3  # margin at progress 1
    schedule: str = "linear"  # "linear" | "cosine" | "step" (start for the first half, end after)

    def __post_init__(self) -> None:
        _check(self.schedule in ("linear", "cosine", "step"),
               f"loss.dynamic_margin.schedule must be linear, cosine or step, got {self.schedule!r}")
        _check(self.start >= 0 and self.end >= 0, "loss.dynamic_margin: start and end must be >= 0")


@dataclass(frozen=True)
class CrossDecoderConfig:
    weight: float = 0.0  # TNLBT: weight of the title cross-entropy of a decoder fusing image + recipe; 0 = off
    layers: int = 2  # decoder layers
    heads: int = 4  # decoder attention heads

    def __post_init__(self) -> None:
        _check(self.layers >= 1 and self.heads >= 1 and self.weight >= 0, "loss.cross_decoder: bad layers/heads/weight")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


MATCHING_MODES = ("itm", "paper")
LOCAL_SCORES = ("decoder", "late")
TRIPLET_REDUCTIONS = ("all", "violating")
SELF_DISTILL_TARGETS = ("ema", "whole_image")


@dataclass(frozen=True)
class MatchingConfig:
    # MALM's image-text matching decoders psi / psi'; on when global_weight or local_weight is > 0.
    # "itm": image-grounded matching (ALBEF / T-Food): every image is also decoded with a sampled hard-negative
    # recipe and every recipe with a sampled hard-negative image; a matched / not-matched head on the fused
    # features (cross-entropy, global_weight) and the per-patch score contrasted against the same patch in the
    # negative pairs (local_weight). "paper": MALM's positive-only InfoNCE terms (eqs. 6-9), each sample decoded
    # with its own partner only -- solvable without the image (docs/ablation.md), kept for the record.
    mode: str = "itm"
    layers: int = 1  # decoder depth (the paper says 1 in the method, 4 in its implementation details)
    heads: int = 4  # decoder attention heads
    global_weight: float = 0.0  # weight of the global term ("itm": matched / not matched; "paper": InfoNCE)
    local_weight: float = 0.0  # weight of the per-patch term (0 with global_weight > 0: the no-local ablation)
    temperature: float = 0.07  # InfoNCE temperature; "itm": also of the softmax hard negatives are sampled from
    # mode "paper" only -- 0: the paper's global InfoNCE (negatives = other pairs' features, each decoded with its own partner).
    # k > 0: also decode each image with its k hardest in-batch recipes (and each recipe with its k hardest
    # images) and contrast the pair scores, so the matching score itself must tell pairs apart.
    pair_negatives: int = 0
    # With pair_negatives > 0: the local loss too contrasts each patch's score in its own pair against the
    # same patch's score in the k decoded negative pairs (the per-patch InfoNCE has the same leak otherwise).
    local_pairs: bool = False
    # How the local (per-patch) score is made; read in mode "itm" only (mode "paper" keeps its own decoded
    # per-patch InfoNCE, so switching a malm preset to "paper" gives the paper's method whatever this says).
    # "decoder": patch p's attended feature vs its attention-weighted recipe summary in the decoded pair,
    # contrasted against the same patch in the two sampled negative pairs. "late": token-level late interaction (FILIP): patches and recipe tokens projected
    # and L2-normalized, score = mean of (each patch's best cosine over the recipe's tokens) and (each recipe
    # token's best cosine over the patches), contrasted over every in-batch recipe / image (near-duplicates
    # excluded). No cross-attention, so no pair can copy its partner; it is also what `--rerank` scores with.
    local_score: str = "decoder"

    def __post_init__(self) -> None:
        _check(self.layers >= 1 and self.heads >= 1, "loss.matching: layers and heads must be >= 1")
        _check(self.local_score in LOCAL_SCORES,
               f"loss.matching.local_score must be one of {LOCAL_SCORES}, got {self.local_score!r}")
        _check(self.mode in MATCHING_MODES, f"loss.matching.mode must be one of {MATCHING_MODES}, got {self.mode!r}")
        _check(self.mode == "paper" or (self.pair_negatives == 0 and not self.local_pairs),
               "loss.matching.pair_negatives / local_pairs are options of mode 'paper' (top-k decoded negatives); "
               "mode 'itm' samples its own hard negatives")
        _check(self.pair_negatives >= 0, "loss.matching.pair_negatives must be >= 0")
        _check(not self.local_pairs or self.pair_negatives > 0,
               "loss.matching.local_pairs needs loss.matching.pair_negatives > 0 (the negative pairs it scores)")
        _check(self.global_weight >= 0 and self.local_weight >= 0, "loss.matching: weights must be >= 0")
        _check(self.temperature > 0, "loss.matching.temperature must be > 0")

    @property
    def enabled(self) -> bool:
        return self.global_weight > 0 or self.local_weight > 0


@dataclass(frozen=True)
class MaskConfig:
    enabled: bool = False  # MALM: the student image encoder sees only the visible patches (augmentation, not a loss)
    ratio: float = 0.75  # fraction of patches masked (MALM's best: 0.75)
    # The retrieval embedding from an extra pass over the whole image instead of the masked one:
    # at test time the encoder sees whole images, and a small ViT trained briefly from scratch does not
    # bridge that gap on its own (see docs/ablation.md). Matching and self-distillation still use the masked pass.
    full_image_retrieval: bool = False

    def __post_init__(self) -> None:
        _check(0.0 <= self.ratio < 1.0, f"loss.mask.ratio must be in [0, 1), got {self.ratio}")


@dataclass(frozen=True)
class SelfDistillConfig:
    """MALM's masked self-distillation (`loss.self_distill`); not the export student's `export.distill.DistillConfig`."""

    weight: float = 0.0  # weight of the Smooth-L1 on masked patch features (needs loss.mask); 0 = off
    ema_decay: float = 0.999  # teacher <- decay * teacher + (1 - decay) * student after each step
    predictor_layers: int = 2  # transformer layers predicting the teacher's masked-patch features
    # Whose whole-image features are predicted: "ema" (MALM's EMA teacher, one more encoder pass per step) or
    # "whole_image" (the student's own whole-image pass, stop-gradient, shared with the retrieval embedding:
    # no teacher pass and no EMA update; needs loss.mask.full_image_retrieval). CPU, see malm_lean.md.
    target: str = "ema"

    def __post_init__(self) -> None:
        _check(0.0 <= self.ema_decay <= 1.0, "loss.self_distill.ema_decay must be in [0, 1]")
        _check(self.target in SELF_DISTILL_TARGETS,
               f"loss.self_distill.target must be one of {SELF_DISTILL_TARGETS}, got {self.target!r}")
        _check(self.weight >= 0 and self.predictor_layers >= 1, "loss.self_distill: bad weight or predictor_layers")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


@dataclass(frozen=True)
class LossConfig:
    retrieval_weight: float = 1.0  # weight of the retrieval loss (triplet or InfoNCE, see `retrieval`); 0 = off
    triplet_margin: float = 0.3  # fixed margin on cosine distance (H-T: 0.3); see dynamic_margin
    # The retrieval loss on the global embeddings: "triplet" (H-T, TNLBT, MALM)
    # or "infonce" (CLIP's symmetric InfoNCE at infonce_temperature; objectives/contrastive.py).
    retrieval: str = "triplet"
    infonce_temperature: float = 0.05
    hard_negative: bool = False  # hardest in-batch negative instead of the average (triplet_reduction)
    # How the triplet costs are averaged: "all" = over all B x B entries, the diagonal's zeros included (H-T,
    # amzn/image-to-recipe-transformers src/utils/loss.py); "violating" = over the triplets that still violate
    # the margin (AdaMine, T-Food). The default is the older behaviour, so saved configs keep their meaning.
    triplet_reduction: str = "violating"
    # Every loss but the retrieval one is multiplied by min(1, epoch / aux_warmup_epochs): a linear ramp from 0,
    # so early (clipped) updates belong to the retrieval loss. 0 = full weight from the first step.
    aux_warmup_epochs: float = 0.0
    recipe_ssl_weight: float = 1.0  # H-T's self-supervised loss between title / ingredients / instructions
    dynamic_margin: DynamicMarginConfig = field(default_factory=DynamicMarginConfig)
    cross_decoder: CrossDecoderConfig = field(default_factory=CrossDecoderConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    self_distill: SelfDistillConfig = field(default_factory=SelfDistillConfig)

    def __post_init__(self) -> None:
        _check(self.retrieval_weight >= 0 and self.recipe_ssl_weight >= 0, "loss: weights must be >= 0")
        _check(self.triplet_margin >= 0, "loss.triplet_margin must be >= 0")
        _check(self.retrieval in ("triplet", "infonce"),
               f"loss.retrieval must be 'triplet' or 'infonce', got {self.retrieval!r}")
        _check(self.infonce_temperature > 0, "loss.infonce_temperature must be > 0")
        _check(self.retrieval == "triplet" or not self.dynamic_margin.enabled,
               "loss.dynamic_margin changes the triplet's margin; it needs loss.retrieval='triplet'")
        _check(self.triplet_reduction in TRIPLET_REDUCTIONS,
               f"loss.triplet_reduction must be one of {TRIPLET_REDUCTIONS}, got {self.triplet_reduction!r}")
        _check(self.aux_warmup_epochs >= 0, "loss.aux_warmup_epochs must be >= 0")
        _check(not self.self_distill.enabled or self.self_distill.target != "whole_image"
               or (self.mask.enabled and self.mask.full_image_retrieval),
               "loss.self_distill.target 'whole_image' needs loss.mask.enabled and loss.mask.full_image_retrieval "
               "(the whole-image pass it predicts)")

    def aux_ramp(self, epoch: float) -> float:
        """The auxiliary losses' weight factor at `epoch` (fractional epochs done): linear from 0 to 1."""
        if self.aux_warmup_epochs <= 0:
            return 1.0
        return min(1.0, max(0.0, epoch / self.aux_warmup_epochs))
