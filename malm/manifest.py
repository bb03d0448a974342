"""The bundle manifest as typed, frozen sections (stdlib only): validated once here, read by the SDK,
written only through `BundleWriter`'s setters (malm/bundle.py).

`Manifest.from_dict(d, where)` checks the shape of every section and raises a `BundleError` naming the
bundle (`where`) and the field; `to_dict()` gives back the same JSON keys. Keys this version does not know
are kept in each section's `extra` and written back unchanged, so a newer writer's fields survive a rewrite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from malm.errors import BundleError

FORMAT = "malm-bundle"
FORMAT_VERSION = 1
DEFAULT_MIN_COSINE = 0.98
SPACES = ("ip", "cosine", "l2")  # hnswlib spaces
RERANK_KINDS = ("late_interaction", "matching_head")
FUSIONS = ("linear",)  # rerank.fusion values this version implements
MISSING_TOKENS = ("global",)
TOKENIZER_RULES = ("malm-text-1",)  # malm/text.py as docs/bundle-format.md specifies it
SELFCHECK_DTYPES = ("float16", "float32")
TOKENS_FILE = "rerank/recipe_tokens.npy"
OFFSETS_FILE = "rerank/recipe_offsets.npy"
# Sections a reader indexes into: a list or string there must be refused with the bundle's name, not surface
# as an AttributeError deep in the SDK.
OBJECT_SECTIONS = ("files", "encoders", "index", "rerank", "preprocess", "embedding", "model", "libraries", "quality",
                   "selfcheck")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
class IndexSettings:
    """What hnswlib needs to be told again at load time (it does not save them; `HnswIndex.load` checks)."""

    dim: int  # embedding dimension
    space: str = "ip"  # inner product over L2-normalized vectors = cosine similarity
    M: int = 32  # graph degree: recall and memory grow with it
    ef_construction: int = 200  # build-time beam width
    ef_search: int = 128  # query-time beam width (hnswlib forgets it on save: reset after load)
    count: int = 0  # live (not deleted) recipes
    max_elements: int = 0  # capacity of the loaded index (grown by resize)
    next_label: int = 0  # next unused label; labels are never reused

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"index: dim must be > 0, got {self.dim}")
        if self.space not in SPACES:
            raise ValueError(f"index: space must be one of {SPACES}, got {self.space!r}")
        if self.M < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise ValueError(f"index: need M >= 2, ef_construction >= 1, ef_search >= 1 (got {self.M}, "
                             f"{self.ef_construction}, {self.ef_search})")
        if self.count < 0 or self.max_elements < 0 or self.next_label < 0:
            raise ValueError("index: count, max_elements and next_label must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndexSettings:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class IndexSection:
    """The manifest's `index`: the two files and the hnswlib settings."""

    file: str  # bundle path of the hnswlib index
    store: str  # bundle path of the SQLite recipe store
    settings: IndexSettings
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know (kept)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> IndexSection:
        d = _obj(d, where, "index")
        for key in ("file", "store"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise BundleError(f"{where}: manifest index needs '{key}' (a file name), got {d.get(key)!r}")
        for key in ("dim", "M", "ef_construction", "ef_search", "count", "max_elements", "next_label"):
            if key in d and not _is_int(d[key]):
                raise BundleError(f"{where}: bad index settings in the manifest ('{key}' must be an integer, "
                                  f"got {d[key]!r})")
        if "dim" not in d:
            raise BundleError(f"{where}: bad index settings in the manifest (no 'dim')")
        try:
            settings = IndexSettings.from_dict(d)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: bad index settings in the manifest ({e})") from None
        known = {"file", "store", *IndexSettings.__dataclass_fields__}
        return cls(d["file"], d["store"], settings, {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, **self.settings.to_dict(), "file": self.file, "store": self.store}


@dataclass(frozen=True)
class RerankSettings:
    """The manifest's `rerank` section: what local re-ranking needs (malm/edge_index/rerank.py)."""

    dim: int  # recipe token width (must equal the image tokens' width for late interaction)
    kind: str = "late_interaction"  # or "matching_head" (then `model` names its ONNX file)
    weight: float = 0.5  # fusion weight of the local score
    candidates: int = 50  # how many global candidates are re-scored
    tokens: str = TOKENS_FILE
    offsets: str = OFFSETS_FILE
    model: str | None = None
    default: bool = False  # switched on by default only where a measurement showed a gain
    fusion: str = "linear"  # score = (1 - weight) * global + weight * local (docs/bundle-format.md, "Re-ranking")
    missing_tokens: str = "global"  # a recipe without token rows takes its global score as its local score
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not know

    def __post_init__(self) -> None:
        if self.kind not in RERANK_KINDS:
            raise ValueError(f"rerank: kind must be one of {RERANK_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"rerank: weight must be in [0, 1], got {self.weight}")
        if self.candidates < 1 or self.dim < 1:
            raise ValueError("rerank: candidates and dim must be >= 1")
        if self.kind == "matching_head" and not self.model:
            raise ValueError("rerank: kind 'matching_head' needs 'model' (the ONNX file)")
        if self.fusion not in FUSIONS or self.missing_tokens not in MISSING_TOKENS:
            raise ValueError(f"rerank: fusion {self.fusion!r} / missing_tokens {self.missing_tokens!r} are not "
                             f"supported by this malm (it implements {FUSIONS} / {MISSING_TOKENS})")

    def files(self) -> list[str]:
        return [self.tokens, self.offsets, *([self.model] if self.model else [])]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RerankSettings:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        return cls(**known, extra=_extra(d, cls))

    @classmethod
    def from_manifest(cls, d: Any, where: str = "manifest") -> RerankSettings:
        d = _obj(d, where, "rerank")
        for key in ("dim", "candidates"):
            if key in d and not _is_int(d[key]):
                raise BundleError(f"{where}: bad rerank section in the manifest ('{key}' must be an integer, "
                                  f"got {d[key]!r})")
        for key in ("tokens", "offsets", "model"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise BundleError(f"{where}: bad rerank section in the manifest ('{key}' must be a file name)")
        if "weight" in d and not _is_num(d["weight"]):
            raise BundleError(f"{where}: bad rerank section in the manifest ('weight' must be a number)")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: bad rerank section in the manifest ({e})") from None


RerankSection = RerankSettings  # the manifest's name for it


@dataclass(frozen=True)
class EncoderEntry:
    """One entry of the manifest's `encoders`: a model file and how to run it."""

    file: str  # bundle path (.onnx, or an .mlpackage directory)
    kind: str | None = None  # "onnx" | "coreml" | "tensorrt-onnx"
    role: str | None = None  # "image" | "recipe" | "rerank"
    precision: str | None = None  # "fp32" | "int8" | "fp16" | ...
    quantization: Mapping[str, Any] | None = None  # int8: the quantizer's settings and the graph's QDQ properties
    extra: Mapping[str, Any] = field(default_factory=dict)  # io spec, model_hash, quality, ... (kept as written)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest", name: str = "?") -> EncoderEntry:
        if not isinstance(d, Mapping) or not isinstance(d.get("file"), str):
            raise BundleError(f"{where}: manifest encoder {name!r} needs a 'file'")
        for key in ("kind", "role", "precision"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise BundleError(f"{where}: manifest encoder {name!r}: '{key}' must be a string, got {d[key]!r}")
        q = d.get("quantization")
        if q is not None and not isinstance(q, Mapping):
            raise BundleError(f"{where}: manifest encoder {name!r}: 'quantization' must be an object")
        return cls(d["file"], d.get("kind"), d.get("role"), d.get("precision"), q, _extra(d, cls))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.extra, "file": self.file}
        for key in ("kind", "role", "precision", "quantization"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


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
        for key in ("size", "resize", "max_pixels"):
            if key in d and (not _is_int(d[key]) or d[key] <= 0):
                raise BundleError(f"{where}: bad preprocess config in the manifest ('{key}' must be a positive "
                                  f"integer, got {d[key]!r})")
        for key in ("mean", "std"):
            if key in d and (not isinstance(d[key], list) or len(d[key]) != 3 or not all(map(_is_num, d[key]))):
                raise BundleError(f"{where}: bad preprocess config in the manifest ('{key}' must be 3 finite "
                                  f"numbers, got {d[key]!r})")
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


@dataclass(frozen=True)
class EmbeddingSection:
    """The manifest's `embedding`: the space the encoders and the index share."""

    dim: int
    metric: str = "cosine"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> EmbeddingSection:
        d = _obj(d, where, "embedding")
        if not _is_int(d.get("dim")) or d["dim"] <= 0:
            raise BundleError(f"{where}: manifest 'embedding.dim' is missing or invalid")
        if not isinstance(d.get("metric", "cosine"), str):
            raise BundleError(f"{where}: manifest 'embedding.metric' must be a string")
        return cls(d["dim"], d.get("metric", "cosine"), _extra(d, cls))

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "dim": self.dim, "metric": self.metric}


@dataclass(frozen=True)
class SelfCheckSection:
    """Reference inputs and their fp32 embeddings, run by the SDK where the bundle lands (malm/sdk/selfcheck.py)."""

    inputs: str  # bundle path of [N,3,H,W] float16 preprocessed images (.npy)
    fp32_embeddings: str  # bundle path of [N,D] float32 embeddings of exactly those inputs by the fp32 ONNX
    count: int  # N
    min_cosine: float = DEFAULT_MIN_COSINE  # an encoder whose mean cosine to them is lower is not used
    expected: Mapping[str, float] = field(default_factory=dict)  # int8 variant -> its exact-math cosine at export
    exported_on: str = ""  # the exporting CPU, in words (malm.cpu.description)
    inputs_dtype: str = "float16"  # as stored; cast (exactly) to float32 before running an encoder

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> SelfCheckSection:
        if not isinstance(d, Mapping):
            raise BundleError(f"{where}: bad selfcheck section (not an object)")
        for key in ("inputs", "fp32_embeddings"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise BundleError(f"{where}: bad selfcheck section (needs '{key}' file name)")
        mc = d.get("min_cosine", DEFAULT_MIN_COSINE)
        if isinstance(mc, bool) or not isinstance(mc, (int, float)) or not math.isfinite(mc) or not -1 <= mc <= 1:
            raise BundleError(f"{where}: selfcheck min_cosine must be a number in [-1, 1], got {mc!r}")
        count = d.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BundleError(f"{where}: selfcheck count must be a non-negative integer, got {count!r}")
        expected = d.get("expected") or {}
        if not isinstance(expected, Mapping) or not all(isinstance(v, (int, float)) for v in expected.values()):
            raise BundleError(f"{where}: selfcheck expected must map encoder names to cosines")
        return cls(d["inputs"], d["fp32_embeddings"], count, float(mc), dict(expected), str(d.get("exported_on", "")),
                   _selfcheck_dtype(d, where))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "fp32_embeddings": self.fp32_embeddings, "count": self.count,
                "min_cosine": self.min_cosine, "expected": dict(self.expected), "exported_on": self.exported_on,
                "inputs_dtype": self.inputs_dtype}


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


RECIPE_INPUTS = ("title", "ingredients", "instructions")


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


@dataclass(frozen=True)
class FileEntry:
    sha256: str  # 64 lowercase hex digits (of the file, or of a directory tree: malm.bundle.sha256_path)
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """The whole `manifest.json`. Sections a bundle may lack are None (or empty)."""

    format_version: int
    malm_version: str
    created: str
    files: Mapping[str, FileEntry]
    encoders: Mapping[str, EncoderEntry]
    libraries: Mapping[str, str] | None = None  # name -> version at build time
    quality: Mapping[str, Any] | None = None  # variant -> metrics, as the export report has them
    updated: str | None = None
    model: Mapping[str, Any] | None = None  # training config, its hash, the checkpoint's sha256
    student: Mapping[str, Any] | None = None  # the distilled student's record, when one was exported
    preprocess: PreprocessSection | None = None
    embedding: EmbeddingSection | None = None
    index: IndexSection | None = None
    rerank: RerankSettings | None = None
    selfcheck: SelfCheckSection | None = None
    tokenizer: TokenizerSection | None = None  # absent: derived (docs/bundle-format.md, "Tokenizer")
    recipe_selfcheck: RecipeSelfCheckSection | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> Manifest:
        """Check the shape of every section (not the files' hashes nor that paths stay in the bundle:
        that needs the bundle's root, see malm.bundle.read_manifest)."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise BundleError(f"{where}: manifest.json is not a malm bundle manifest")
        if d.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where}: format version {d.get('format_version')!r} is not supported "
                              f"(expects {FORMAT_VERSION})")
        for key in OBJECT_SECTIONS:
            if d.get(key) is not None:
                _obj(d[key], where, key)
        files = {}
        for rel, e in (d.get("files") or {}).items():
            if (not isinstance(e, Mapping) or not isinstance(e.get("sha256"), str) or not _SHA256.fullmatch(e["sha256"])
                    or not _is_int(e.get("bytes")) or e["bytes"] < 0):
                raise BundleError(f"{where}: manifest entry for {rel!r} needs 'sha256' (64 hex digits) and 'bytes' (>= 0)")
            files[rel] = FileEntry(e["sha256"], e["bytes"])
        encoders = {n: EncoderEntry.from_dict(e, where, n) for n, e in (d.get("encoders") or {}).items()}

        def opt(key: str, parse: Any) -> Any:
            return None if d.get(key) is None else parse(d[key], where)

        return cls(
            format_version=d["format_version"], malm_version=str(d.get("malm_version", "")),
            created=str(d.get("created", "")), files=files, encoders=encoders,
            libraries=d.get("libraries"), quality=d.get("quality"),
            updated=d.get("updated"), model=d.get("model"), student=d.get("student"),
            preprocess=opt("preprocess", PreprocessSection.from_dict),
            embedding=opt("embedding", EmbeddingSection.from_dict),
            index=opt("index", IndexSection.from_dict),
            rerank=opt("rerank", RerankSettings.from_manifest),
            selfcheck=opt("selfcheck", SelfCheckSection.from_dict),
            tokenizer=opt("tokenizer", TokenizerSection.from_dict),
            recipe_selfcheck=opt("recipe_selfcheck", RecipeSelfCheckSection.from_dict),
            extra={k: v for k, v in d.items() if k not in _TOP_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.extra, "format": FORMAT, "format_version": self.format_version,
                             "malm_version": self.malm_version, "created": self.created,
                             "files": {rel: asdict(e) for rel, e in self.files.items()},
                             "encoders": {n: e.to_dict() for n, e in self.encoders.items()}}
        for key in ("libraries", "quality", "updated", "model", "student"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        for key in ("preprocess", "embedding", "index", "rerank", "selfcheck"):
            section = getattr(self, key)
            if section is not None:
                d[key] = section.to_dict()
        for key in ("tokenizer", "recipe_selfcheck"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key).to_dict()
        return d


_TOP_KEYS = {"format", *(f.name for f in fields(Manifest) if f.name != "extra")}
