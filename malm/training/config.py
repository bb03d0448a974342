"""Experiment configuration: frozen dataclasses, stored as JSON, with named presets.

Every run saves `config.json` (`ExperimentConfig.to_dict()`) beside its checkpoints. Loading fills keys
that an older config did not have from the defaults, renames keys of older releases (`upgrade_config_dict`,
so old runs load) and rejects unknown keys with a message naming them. The loss section is
`malm.training.loss_config`. Presets are the JSON files in `presets/`, each a diff: the preset it starts
from (`"base"`, or `"defaults"`) and the dotted keys it changes, applied by `with_overrides`:

    {"base": "ht-tiny", "name": "tnlbt-tiny", "loss.cross_decoder.weight": 1.0, "loss.dynamic_margin.enabled": true}

    cfg = load_preset("ht-tiny")
    cfg = cfg.with_overrides({"train.lr": 3e-4, "loss.triplet_margin": 0.2})
    malm train --preset tnlbt-tiny --show-config        # the resolved config, as JSON
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from malm.errors import ConfigError
from malm.preprocess import PreprocessConfig
from malm.text import TextLimits
from malm.training.config_upgrade import RENAMED_KEYS, renamed_hint, upgrade_config_dict
from malm.training.lite0_stages import LITE0_STAGES, lite0_stem_stride
from malm.training.loss_config import (
    LOCAL_SCORES,
    MATCHING_MODES,
    TRIPLET_REDUCTIONS,
    CrossDecoderConfig,
    DynamicMarginConfig,
    LossConfig,
    MaskConfig,
    MatchingConfig,
    SelfDistillConfig,
)

PRESETS_DIR = Path(__file__).resolve().parent / "presets"

T = TypeVar("T")
__all__ = [
    "LOCAL_SCORES", "MATCHING_MODES", "TRIPLET_REDUCTIONS", "ConfigError", "CrossDecoderConfig", "DataConfig",
    "DynamicMarginConfig", "ExperimentConfig", "ImageEncoderConfig", "LossConfig", "MaskConfig", "MatchingConfig",
    "ModelConfig", "RecipeEncoderConfig", "SelfDistillConfig", "TrainConfig", "diff_configs", "load_config_file",
    "load_preset", "parse_overrides", "preset_diff", "preset_names", "resolve_preset", "upgrade_config_dict",
    "RENAMED_KEYS",
]


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
        if self.loss.self_distill.enabled or self.loss.matching.enabled:
            # Both need patch-level image tokens aligned to the mask.
            _check(self.model.image.num_patches >= 4, "loss: matching/self_distill need at least 4 image patches")

    def preprocess(self) -> Any:
        """The eval-time `PreprocessConfig` for this model's input size."""
        return PreprocessConfig.for_size(self.model.image.image_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """A config from its JSON form, written by this release or an older one (`upgrade_config_dict`)."""
        return _from_dict(cls, upgrade_config_dict(d), "")

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
                    raise ConfigError(f"unknown config key {key!r}{renamed_hint(key)}")
                node = node[p]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                raise ConfigError(f"unknown config key {key!r}{renamed_hint(key)}")
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


def load_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> ExperimentConfig:
    """A config file: a full config (as saved beside checkpoints) or a preset diff naming its `base`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read JSON ({e})") from e
    try:
        if isinstance(d, dict) and "base" in d:
            return resolve_preset(d, path.parent, (*_chain, path.resolve()))
        return ExperimentConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def resolve_preset(diff: dict[str, Any], folder: Path = PRESETS_DIR,
                   _chain: tuple[Path, ...] = ()) -> ExperimentConfig:
    """A preset diff `{"base": NAME, "dotted.key": value, ...}` applied to its base: "defaults" (the
    dataclasses' defaults), a preset name, or a .json path relative to `folder`."""
    base = diff["base"]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"preset base must be a preset name or 'defaults', got {base!r}")
    if base == "defaults":
        config = ExperimentConfig()
    else:
        path = folder / base if base.endswith(".json") else PRESETS_DIR / f"{base}.json"
        if not path.exists():
            raise ConfigError(f"preset base {base!r} not found; presets: {', '.join(preset_names())}")
        if path.resolve() in _chain:
            raise ConfigError(f"preset base {base!r} includes itself")
        config = load_config_file(path, _chain)
    return config.with_overrides(_flatten({k: v for k, v in diff.items() if k != "base"}))


def preset_diff(config: ExperimentConfig, base: str = "defaults") -> dict[str, Any]:
    """The shortest preset diff giving `config` from `base` (to write a preset from a full config)."""
    start = ExperimentConfig() if base == "defaults" else load_preset(base)
    flat, ref = _flatten(config.to_dict()), _flatten(start.to_dict())
    changed = {k: v for k, v in flat.items() if ref.get(k) != v}
    return {"base": base, **dict(sorted(changed.items(), key=lambda kv: (kv[0] != "name", kv[0])))}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


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
