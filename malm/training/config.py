"""Experiment configuration: frozen dataclasses, stored as JSON, with named presets.

Every run saves `config.json` (`ExperimentConfig.to_dict()`) beside its checkpoints. Loading fills keys
that an older config did not have from the defaults (so old runs upgrade) and rejects unknown keys
with a message naming them. Presets are the JSON files in `presets/`:

    cfg = load_preset("ht-tiny")
    cfg = cfg.with_overrides({"train.lr": 3e-4, "loss.triplet_margin": 0.2})
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from malm.errors import MalmError
from malm.preprocess import PreprocessConfig
from malm.text import TextLimits
from malm.training.lite0_stages import LITE0_STAGES, lite0_stem_stride

PRESETS_DIR = Path(__file__).resolve().parent / "presets"

T = TypeVar("T")


class ConfigError(MalmError, ValueError):
    """An invalid configuration value or key (from a preset, a config file or `--set`)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# ----------------------------------------------------------------------------------------------- model

# Image towers `model.image.backbone` names: "vit" (patchify conv) or a hybrid ViT whose patch tokens are a
# pretrained CNN's feature map (malm/training/models/hybrid.py).
HYBRID_BACKBONES = ("hybrid_effnet_lite0",)



@dataclass(frozen=True)
class ImageEncoderConfig:
    image_size: int = 224  # side of the square input image in pixels
    patch_size: int = 16  # side of one square patch; image_size must be a multiple
    width: int = 768  # token width of the transformer
    depth: int = 12  # number of transformer blocks
    heads: int = 12  # attention heads per block; must divide width
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, as a multiple of width
    drop_path: float = 0.1  # stochastic-depth rate of the last block (linear ramp from 0)
    dropout: float = 0.0  # dropout after attention / MLP projections
    act: str = "gelu"  # "gelu" (timm / ImageNet ViTs) or "quick_gelu" (OpenAI CLIP weights)
    norm_pre: bool = False  # LayerNorm before the blocks, as CLIP's ViT has (ln_pre)
    layer_norm_eps: float = 1e-6  # CLIP checkpoints use 1e-5
    backbone: str = "vit"  # "vit" | "hybrid_effnet_lite0": ImageNet EfficientNet-Lite0 stages as the patch stem
    stem_stages: int = 5  # hybrid: Lite0 stages kept (5: stride 16, 112 channels); patch_size = the stride
    freeze_stem: bool = True  # hybrid: keep the ImageNet stem fixed (else it trains at train.stem_lr)

    def __post_init__(self) -> None:
        _check(self.backbone == "vit" or self.backbone in HYBRID_BACKBONES,
               f"model.image.backbone must be 'vit' or one of {', '.join(HYBRID_BACKBONES)}, got {self.backbone!r}")
        if self.backbone in HYBRID_BACKBONES:
            _check(1 <= self.stem_stages <= len(LITE0_STAGES),
                   f"model.image.stem_stages must be 1..{len(LITE0_STAGES)}, got {self.stem_stages}")
            stride = lite0_stem_stride(self.stem_stages)
            _check(self.patch_size == stride,
                   f"model.image: a {self.backbone} stem of {self.stem_stages} stages has stride {stride}; "
                   f"set patch_size to {stride} (got {self.patch_size})")
        _check(self.image_size > 0 and self.patch_size > 0, "model.image: image_size and patch_size must be > 0")
        _check(self.image_size % self.patch_size == 0,
               f"model.image: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        _check(self.width > 0 and self.depth > 0 and self.heads > 0, "model.image: width, depth, heads must be > 0")
        _check(self.width % self.heads == 0, f"model.image: heads {self.heads} must divide width {self.width}")
        _check(self.mlp_ratio > 0, "model.image: mlp_ratio must be > 0")
        _check(0.0 <= self.drop_path < 1.0 and 0.0 <= self.dropout < 1.0, "model.image: drop rates must be in [0, 1)")
        _check(self.act in ("gelu", "quick_gelu"), f"model.image: act must be gelu or quick_gelu, got {self.act!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class RecipeEncoderConfig:
    width: int = 512  # token width of every recipe transformer (H-T: 512)
    word_layers: int = 2  # layers of the word-level transformers (title, each ingredient, each instruction)
    component_layers: int = 2  # layers of the component-level transformers (over ingredients / instructions)
    heads: int = 4  # attention heads; must divide width
    mlp_ratio: float = 4.0  # feed-forward width as a multiple of width
    dropout: float = 0.1  # dropout inside the recipe transformers
    sentence_features: str = "learned"  # "learned": word-level transformers; "minilm": frozen MiniLM sentence vectors
    minilm_dim: int = 384  # width of the MiniLM sentence vectors (all-MiniLM-L6-v2: 384)

    def __post_init__(self) -> None:
        _check(self.width > 0 and self.heads > 0 and self.width % self.heads == 0,
               f"model.recipe: heads {self.heads} must divide width {self.width}")
        _check(self.word_layers >= 1 and self.component_layers >= 1, "model.recipe: layers must be >= 1")
        _check(self.mlp_ratio > 0 and 0.0 <= self.dropout < 1.0, "model.recipe: bad mlp_ratio or dropout")
        _check(self.sentence_features in ("learned", "minilm"),
               f"model.recipe: sentence_features must be 'learned' or 'minilm', got {self.sentence_features!r}")


@dataclass(frozen=True)
class ModelConfig:
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # the ViT image encoder
    recipe: RecipeEncoderConfig = field(default_factory=RecipeEncoderConfig)  # the hierarchical recipe encoder
    embed_dim: int = 1024  # the shared image/recipe embedding (H-T: 1024)

    def __post_init__(self) -> None:
        _check(self.embed_dim > 0, "model.embed_dim must be > 0")


# ------------------------------------------------------------------------------------------------ loss


@dataclass(frozen=True)
class DynamicMarginConfig:
    enabled: bool = False  # TNLBT: grow the triplet margin over training
    start: float = 0.05  # margin at progress 0
    end: float = 0.3  # margin at progress 1
    schedule: str = "linear"  # "linear" | "cosine" | "step" (start for the first half, end after)

    def __post_init__(self) -> None:
        _check(self.schedule in ("linear", "cosine", "step"),
               f"loss.dynamic_margin.schedule must be linear, cosine or step, got {self.schedule!r}")
        _check(self.start >= 0 and self.end >= 0, "loss.dynamic_margin: start and end must be >= 0")


@dataclass(frozen=True)
class CrossDecoderConfig:
    enabled: bool = False  # TNLBT: decoder fusing image tokens + recipe features, generating the title
    layers: int = 2  # decoder layers
    heads: int = 4  # decoder attention heads
    weight: float = 1.0  # weight of its title cross-entropy

    def __post_init__(self) -> None:
        _check(self.layers >= 1 and self.heads >= 1 and self.weight >= 0, "loss.cross_decoder: bad layers/heads/weight")


MATCHING_MODES = ("itm", "paper")
LOCAL_SCORES = ("decoder", "late")
TRIPLET_REDUCTIONS = ("all", "violating")


@dataclass(frozen=True)
class MatchingConfig:
    enabled: bool = False  # MALM: image-text matching decoders psi / psi'
    # "itm": image-grounded matching (ALBEF / T-Food): every image is also decoded with a sampled hard-negative
    # recipe and every recipe with a sampled hard-negative image; a matched / not-matched head on the fused
    # features (cross-entropy, global_weight) and the per-patch score contrasted against the same patch in the
    # negative pairs (local_weight). "paper": MALM's positive-only InfoNCE terms (eqs. 6-9), each sample decoded
    # with its own partner only -- solvable without the image (docs/ablation.md), kept for the record.
    mode: str = "itm"
    layers: int = 1  # decoder depth (the paper says 1 in the method, 4 in its implementation details)
    heads: int = 4  # decoder attention heads
    global_weight: float = 1.0  # weight of the global InfoNCE ([CLS] vs mean attended recipe)
    local_weight: float = 1.0  # weight of the per-patch InfoNCE
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


@dataclass(frozen=True)
class MaskConfig:
    enabled: bool = False  # MALM: the student image encoder sees only the visible patches
    ratio: float = 0.75  # fraction of patches masked (MALM's best: 0.75)
    # The triplet (retrieval) embedding from an extra pass over the whole image instead of the masked one:
    # at test time the encoder sees whole images, and a small ViT trained briefly from scratch does not
    # bridge that gap on its own (see docs/ablation.md). Matching and distillation still use the masked pass.
    full_image_triplet: bool = False

    def __post_init__(self) -> None:
        _check(0.0 <= self.ratio < 1.0, f"loss.mask.ratio must be in [0, 1), got {self.ratio}")


@dataclass(frozen=True)
class SelfDistillConfig:
    """MALM's masked self-distillation (`loss.distill`); not the export student's `export.distill.DistillConfig`."""

    enabled: bool = False  # MALM: masked self-distillation from an EMA teacher
    weight: float = 1.0  # weight of the Smooth-L1 on masked patch features
    ema_decay: float = 0.999  # teacher <- decay * teacher + (1 - decay) * student after each step
    predictor_layers: int = 2  # transformer layers predicting the teacher's masked-patch features

    def __post_init__(self) -> None:
        _check(0.0 <= self.ema_decay <= 1.0, "loss.distill.ema_decay must be in [0, 1]")
        _check(self.weight >= 0 and self.predictor_layers >= 1, "loss.distill: bad weight or predictor_layers")


@dataclass(frozen=True)
class LossConfig:
    triplet_weight: float = 1.0  # weight of the bidirectional image<->recipe triplet loss
    triplet_margin: float = 0.3  # fixed margin on cosine distance (H-T: 0.3); see dynamic_margin
    # The retrieval loss on the global embeddings, weighted by triplet_weight: "triplet" (H-T, TNLBT, MALM)
    # or "infonce" (CLIP's symmetric InfoNCE at infonce_temperature; objectives/contrastive.py).
    retrieval: str = "triplet"
    infonce_temperature: float = 0.05
    hard_negative: bool = False  # hardest in-batch negative instead of the average (triplet_reduction)
    # How the triplet costs are averaged: "all" = over all B x B entries, the diagonal's zeros included (H-T,
    # amzn/image-to-recipe-transformers src/utils/loss.py); "violating" = over the triplets that still violate
    # the margin (AdaMine, T-Food). The default is the older behaviour, so saved configs keep their meaning.
    triplet_reduction: str = "violating"
    # Every loss but the triplet is multiplied by min(1, epoch / aux_warmup_epochs): a linear ramp from 0, so
    # early (clipped) updates belong to the retrieval loss. 0 = full weight from the first step.
    aux_warmup_epochs: float = 0.0
    recipe_ssl_weight: float = 1.0  # H-T's self-supervised loss between title / ingredients / instructions
    dynamic_margin: DynamicMarginConfig = field(default_factory=DynamicMarginConfig)
    cross_decoder: CrossDecoderConfig = field(default_factory=CrossDecoderConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    distill: SelfDistillConfig = field(default_factory=SelfDistillConfig)

    def __post_init__(self) -> None:
        _check(self.triplet_weight >= 0 and self.recipe_ssl_weight >= 0, "loss: weights must be >= 0")
        _check(self.triplet_margin >= 0, "loss.triplet_margin must be >= 0")
        _check(self.retrieval in ("triplet", "infonce"),
               f"loss.retrieval must be 'triplet' or 'infonce', got {self.retrieval!r}")
        _check(self.infonce_temperature > 0, "loss.infonce_temperature must be > 0")
        _check(self.retrieval == "triplet" or not self.dynamic_margin.enabled,
               "loss.dynamic_margin changes the triplet's margin; it needs loss.retrieval='triplet'")
        _check(self.triplet_reduction in TRIPLET_REDUCTIONS,
               f"loss.triplet_reduction must be one of {TRIPLET_REDUCTIONS}, got {self.triplet_reduction!r}")
        _check(self.aux_warmup_epochs >= 0, "loss.aux_warmup_epochs must be >= 0")

    def aux_ramp(self, epoch: float) -> float:
        """The auxiliary losses' weight factor at `epoch` (fractional epochs done): linear from 0 to 1."""
        if self.aux_warmup_epochs <= 0:
            return 1.0
        return min(1.0, max(0.0, epoch / self.aux_warmup_epochs))


# ----------------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 120  # passes over the training split
    batch_size: int = 128  # global batch (split evenly across DDP ranks)
    lr: float = 1e-4  # peak learning rate of everything but the image backbone
    image_lr: float = 1e-5  # peak learning rate of the image backbone (ViT)
    stem_lr: float = 1e-4  # peak learning rate of a hybrid's pretrained CNN stem (when not frozen)
    weight_decay: float = 0.01  # AdamW weight decay (not on norms, biases, embeddings, tokens)
    warmup_steps: int = 0  # linear warm-up steps; 0 means use warmup_fraction
    warmup_fraction: float = 0.02  # warm-up as a fraction of all steps when warmup_steps is 0
    min_lr_ratio: float = 0.01  # the cosine decays to this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    freeze_image_epochs: int = 0  # image backbone learning rate is 0 for the first N epochs (MALM: 20)
    seed: int = 0  # seeds model init, data order, augmentation and masking
    num_workers: int = 2  # DataLoader workers per rank
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    eval_every: int = 1  # validate every N epochs (and after the last)
    eval_size: int = 1000  # validation pairs for image->recipe R@1 (fewer if the split is smaller)
    log_every: int = 10  # steps between metrics.jsonl training lines (losses are read from the device only then)
    state_every: int = 1  # epochs between saves of the resumable state (optimizer, RNG); always at the last
    image_cache: bool = True  # decode + resize every photo once into a uint8 memmap; crop/flip/normalize per batch
    # A frozen hybrid stem runs once per training photo (as is and mirrored) instead of once per step; items
    # are crops of its feature map (malm/training/data/stem_cache.py). Needs image_cache; ignored otherwise.
    stem_cache: bool = True
    compile: bool = False  # torch.compile the image encoder (CUDA; slow to start, faster steps)
    # Recipes of the training split without photos (Recipe1M: most of them), this many per step, encoded beside
    # the paired batch for the recipe self-supervision only (as H-T does). 0 = paired recipes only.
    recipe_only_batch: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(self.batch_size >= 2, "train.batch_size must be >= 2 (in-batch negatives)")
        _check(self.lr > 0 and self.image_lr >= 0 and self.stem_lr >= 0,
               "train.lr must be > 0, train.image_lr and train.stem_lr >= 0")
        _check(self.weight_decay >= 0 and self.grad_clip >= 0, "train: weight_decay and grad_clip must be >= 0")
        _check(self.warmup_steps >= 0 and 0 <= self.warmup_fraction < 1, "train: bad warm-up")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]")
        _check(self.freeze_image_epochs >= 0 and self.num_workers >= 0, "train: negative counts")
        _check(self.eval_every >= 1 and self.eval_size >= 2 and self.log_every >= 1, "train: bad eval/log settings")
        _check(self.state_every >= 1, "train.state_every must be >= 1")
        _check(self.recipe_only_batch >= 0, "train.recipe_only_batch must be >= 0")

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Warm-up then cosine to `min_lr_ratio`, as a multiple of the peak lr; `step` counts from 0."""
        warmup = self.warmup_steps or int(round(self.warmup_fraction * total_steps))
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total_steps - warmup)
        t = min(1.0, (step - warmup) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class DataConfig:
    min_freq: int = 10  # words seen fewer times in train are <unk> (Recipe1M practice)
    max_title_tokens: int = 20  # title tokens incl. <start>/<end>
    max_ingredients: int = 20  # ingredients kept per recipe
    max_instructions: int = 20  # instructions kept per recipe
    max_tokens: int = 15  # tokens per ingredient / instruction incl. <start>/<end>

    def __post_init__(self) -> None:
        _check(self.min_freq >= 1, "data.min_freq must be >= 1")
        _check(min(self.max_title_tokens, self.max_ingredients, self.max_instructions, self.max_tokens) >= 1,
               "data: limits must be >= 1")

    def limits(self) -> Any:
        """The `malm.text.TextLimits` these settings describe."""
        return TextLimits(max_title_tokens=self.max_title_tokens, max_ingredients=self.max_ingredients,
                          max_instructions=self.max_instructions, max_tokens=self.max_tokens)


# ------------------------------------------------------------------------------------------ experiment


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "ht"  # preset or experiment name (informational)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name), "config name must not be empty")
        if self.loss.distill.enabled or self.loss.matching.enabled:
            # Both need patch-level image tokens aligned to the mask.
            _check(self.model.image.num_patches >= 4, "loss: matching/distill need at least 4 image patches")

    def preprocess(self) -> Any:
        """The eval-time `PreprocessConfig` for this model's input size."""
        return PreprocessConfig.for_size(self.model.image.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _from_dict(cls, d, "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def hash(self) -> str:
        """Short content hash of the whole config (stored with checkpoints)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any]) -> ExperimentConfig:
        """A copy with dotted keys replaced, e.g. {"train.lr": 1e-3}; values are checked like JSON input."""
        d = self.to_dict()
        for key, value in overrides.items():
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown config key {key!r}")
                node = node[p]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                raise ConfigError(f"unknown config key {key!r}")
            node[parts[-1]] = value
        return ExperimentConfig.from_dict(d)


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if typ is bool:
        _check(isinstance(value, bool), f"config {where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and isinstance(value, float) and value.is_integer():
            return int(value)
        _check(ok, f"config {where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"config {where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        _check(isinstance(value, str), f"config {where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type[T], d: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "root"
    if not isinstance(d, dict):
        raise ConfigError(f"config {where}: expected an object, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"config {where}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in d:
            continue  # missing keys take the defaults, so configs written by older versions still load
        typ = hints[name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            kwargs[name] = _from_dict(typ, d[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(d[name], typ, prefix + name)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_config_file(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read JSON ({e})") from e
    try:
        return ExperimentConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def load_preset(name_or_path: str | Path) -> ExperimentConfig:
    """A preset by name (`ht-tiny`) from `presets/*.json`, or any JSON config file by path."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        return load_config_file(p)
    candidate = PRESETS_DIR / f"{name_or_path}.json"
    if candidate.exists():
        return load_config_file(candidate)
    raise ConfigError(f"unknown preset {str(name_or_path)!r}; presets: {', '.join(preset_names())} "
                      "(or pass a path to a .json config)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-3", "loss.mask.enabled=true"]` -> dict; values parse as JSON, else stay strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out
