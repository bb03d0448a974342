"""The manifest sections docs/bundle-format.md added or spelled out: the image preprocessing's named steps,
the tokenizer, the recipe encoder's self-check (stdlib only, like malm/manifest.py, which re-exports them).

Each is a frozen dataclass with `from_dict` (a `BundleError` naming the bundle and the field) and `to_dict`;
keys a bundle lacks take the defaults that equal what readers did before the key existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from malm.errors import BundleError

DEFAULT_MIN_COSINE = 0.98
FUSIONS = ("linear",)  # rerank.fusion values this version implements
MISSING_TOKENS = ("global",)
TOKENIZER_RULES = ("malm-text-1",)  # malm/text.py as docs/bundle-format.md specifies it
SELFCHECK_DTYPES = ("float16", "float32")
MAX_SIDE = 8192  # preprocess size / resize, in pixels
MAX_PIXELS = 1 << 30  # preprocess.max_pixels (Pillow's own bomb limit is ~179 M)
RECIPE_INPUTS = ("title", "ingredients", "instructions")
MAX_SELFCHECK = 100_000  # self-check reference items


# The manifest's small shape checks (malm/manifest.py imports them from here: this module cannot import it).
def _obj(d: Any, where: str, name: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise BundleError(f"{where}: manifest '{name}' must be an object, got {type(d).__name__}")
    return d


def _extra(d: Mapping[str, Any], cls: type) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k not in known}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class PreprocessSection:
    """The manifest's `preprocess` (malm.preprocess.PreprocessConfig.to_dict()); its values are checked by
    PreprocessConfig itself (it needs Pillow), the types here."""

    size: int = 224
    resize: int = 256
    crop: str = "center"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    max_pixels: int = 64_000_000
    # docs/bundle-format.md's steps, named and parametrized (defaults: what bundles without these keys meant)
    algorithm: str = "malm-preprocess-1"
    exif_orientation: bool = True
    alpha_background: tuple[int, ...] = (255, 255, 255)
    max_aspect: float = 4.0
    jpeg_draft: bool = True
    layout: str = "NCHW"
    dtype: str = "float32"
    channels: str = "RGB"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> PreprocessSection:
        d = _obj(d, where, "preprocess")
        _check_preprocess_spec_keys(d, where)
        for key, bound in (("size", MAX_SIDE), ("resize", MAX_SIDE), ("max_pixels", MAX_PIXELS)):
            if key in d and (not _is_int(d[key]) or not 0 < d[key] <= bound):
                raise BundleError(f"{where}: bad preprocess config in the manifest ('{key}' must be an "
                                  f"integer in [1, {bound}], got {d[key]!r})")
        # Pixels are scaled to [0, 1] first: means far outside it, or stds near 0, overflow float32.
        for key, lo, hi in (("mean", -1e3, 1e3), ("std", 1e-3, 1e3)):
            if key in d and (not isinstance(d[key], list) or len(d[key]) != 3
                             or not all(_is_num(v) and lo <= v <= hi for v in d[key])):
                raise BundleError(f"{where}: bad preprocess config in the manifest ('{key}' must be 3 numbers in "
                                  f"[{lo:g}, {hi:g}], got {str(d[key])[:80]})")
        for key in ("crop", "interpolation"):
            if key in d and not isinstance(d[key], str):
                raise BundleError(f"{where}: bad preprocess config in the manifest ('{key}' must be a string)")
        kw: dict[str, Any] = {k: (tuple(float(x) for x in d[k]) if k in ("mean", "std") else d[k])
              for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        if "alpha_background" in kw:
            kw["alpha_background"] = tuple(kw["alpha_background"])
        return cls(**kw, extra=_extra(d, cls))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["alpha_background"] = list(self.alpha_background)
        return {**self.extra, **d}


def _check_preprocess_spec_keys(d: Mapping[str, Any], where: str) -> None:
    """Types of the preprocess keys docs/bundle-format.md added (their values: PreprocessConfig)."""
    def bad(key: str, what: str) -> BundleError:
        return BundleError(f"{where}: bad preprocess config in the manifest ('{key}' must be {what}, got {d[key]!r})")

    for key in ("algorithm", "layout", "dtype", "channels"):
        if key in d and not isinstance(d[key], str):
            raise bad(key, "a string")
    for key in ("exif_orientation", "jpeg_draft"):
        if key in d and not isinstance(d[key], bool):
            raise bad(key, "true or false")
    bg = d.get("alpha_background")
    if "alpha_background" in d and (not isinstance(bg, list) or len(bg) != 3
                                    or not all(_is_int(v) and 0 <= v <= 255 for v in bg)):
        raise bad("alpha_background", "3 integers in 0..255")
    if "max_aspect" in d and (not _is_num(d["max_aspect"]) or not 1 <= d["max_aspect"] <= 1e6):
        raise bad("max_aspect", "a number in [1, 1e6]")


def _selfcheck_dtype(d: Mapping[str, Any], where: str) -> str:
    dtype = d.get("inputs_dtype", "float16")
    if dtype not in SELFCHECK_DTYPES:
        raise BundleError(f"{where}: selfcheck inputs_dtype must be one of {SELFCHECK_DTYPES}, got {dtype!r}")
    return str(dtype)


@dataclass(frozen=True)
class TokenizerSection:
    """The manifest's `tokenizer`: how recipe text becomes the recipe encoder's ids (docs/bundle-format.md).

    A bundle without it means: `vocab.json`, rules "malm-text-1", limits read off the recipe encoder's input shapes.
    """

    max_title_tokens: int  # T: title ids including <start> and <end>
    max_ingredients: int  # Ni: ingredient lines kept
    max_instructions: int  # Ns: instruction lines kept
    max_tokens: int  # L: ids per ingredient / instruction line including <start> and <end>
    vocab: str = "vocab.json"
    rules: str = "malm-text-1"
    extra: Mapping[str, Any] = field(default_factory=dict)

    LIMITS: ClassVar[tuple[str, ...]] = ("max_title_tokens", "max_ingredients", "max_instructions", "max_tokens")

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> TokenizerSection:
        d = _obj(d, where, "tokenizer")
        for key, low in zip(cls.LIMITS, (3, 1, 1, 3), strict=True):
            if not _is_int(d.get(key)) or not low <= d[key] <= 100_000:
                raise BundleError(f"{where}: manifest tokenizer '{key}' must be an integer in [{low}, 100000], "
                                  f"got {d.get(key)!r}")
        if not isinstance(d.get("vocab", "vocab.json"), str) or not d.get("vocab", "vocab.json"):
            raise BundleError(f"{where}: manifest tokenizer 'vocab' must be a file name")
        if d.get("rules", "malm-text-1") not in TOKENIZER_RULES:
            raise BundleError(f"{where}: manifest tokenizer rules {d.get('rules')!r} are not supported by this malm "
                              f"(it implements {TOKENIZER_RULES})")
        return cls(d["max_title_tokens"], d["max_ingredients"], d["max_instructions"], d["max_tokens"],
                   d.get("vocab", "vocab.json"), d.get("rules", "malm-text-1"), _extra(d, cls))

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, **{k: getattr(self, k) for k in self.LIMITS}, "vocab": self.vocab, "rules": self.rules}


@dataclass(frozen=True)
class RecipeSelfCheckSection:
    """Held-out recipes' token ids (int32 .npy, one file per encoder input) and `recipe_fp32`'s embeddings of them,
    run by the SDK where the bundle lands before it trusts an int8 recipe encoder (malm/sdk/recipe_encoder.py)."""

    title: str  # [N, T] int32
    ingredients: str  # [N, Ni, L] int32
    instructions: str  # [N, Ns, L] int32
    fp32_embeddings: str  # [N, D] float32
    count: int = 0
    min_cosine: float = DEFAULT_MIN_COSINE
    expected: Mapping[str, float] = field(default_factory=dict)  # int8 variant -> its exact-math cosine at export
    exported_on: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def files(self) -> list[str]:
        return [self.title, self.ingredients, self.instructions, self.fp32_embeddings]

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> RecipeSelfCheckSection:
        d = _obj(d, where, "recipe_selfcheck")
        for key in (*RECIPE_INPUTS, "fp32_embeddings"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise BundleError(f"{where}: bad recipe_selfcheck section (needs '{key}' file name)")
        mc = d.get("min_cosine", DEFAULT_MIN_COSINE)
        if not _is_num(mc) or not 0 < mc <= 1:
            raise BundleError(f"{where}: recipe_selfcheck min_cosine must be a number in (0, 1], got {mc!r}")
        if not _is_int(d.get("count", 0)) or d.get("count", 0) < 0:
            raise BundleError(f"{where}: recipe_selfcheck count must be a non-negative integer")
        expected = d.get("expected") or {}
        if not isinstance(expected, Mapping) or not all(_is_num(v) for v in expected.values()):
            raise BundleError(f"{where}: recipe_selfcheck expected must map encoder names to cosines")
        return cls(d["title"], d["ingredients"], d["instructions"], d["fp32_embeddings"], d.get("count", 0),
                   float(mc), dict(expected), str(d.get("exported_on", "")), _extra(d, cls))

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "title": self.title, "ingredients": self.ingredients, "instructions": self.instructions,
                "fp32_embeddings": self.fp32_embeddings, "count": self.count, "min_cosine": self.min_cosine,
                "expected": dict(self.expected), "exported_on": self.exported_on}
