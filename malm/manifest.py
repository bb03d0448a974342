"""The bundle manifest as typed, frozen sections (stdlib only): validated once here, read by the SDK,
written only through `BundleWriter`'s setters (malm/bundle.py).

`Manifest.from_dict(d, where)` checks the shape of every section and raises a `BundleError` naming the
bundle (`where`) and the field; `to_dict()` gives back the same JSON keys. Keys this version does not know
are kept in each section's `extra` and written back unchanged, so a newer writer's fields survive a rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from malm.errors import BundleError
from malm.manifest_spec import (  # noqa: F401  (re-exported: the manifest's sections in one namespace)
    DEFAULT_MIN_COSINE,
    FUSIONS,
    MAX_PIXELS,
    MAX_SIDE,
    MISSING_TOKENS,
    RECIPE_INPUTS,
    SELFCHECK_DTYPES,
    TOKENIZER_RULES,
    PreprocessSection,
    RecipeSelfCheckSection,
    TokenizerSection,
    _extra,
    _is_int,
    _is_num,
    _obj,
    _selfcheck_dtype,
)

FORMAT = "malm-bundle"
FORMAT_VERSION = 1
SPACES = ("ip", "cosine", "l2")  # hnswlib spaces
RERANK_KINDS = ("late_interaction", "matching_head")
TOKENS_FILE = "rerank/recipe_tokens.npy"
OFFSETS_FILE = "rerank/recipe_offsets.npy"
# Sections a reader indexes into: a list or string there must be refused with the bundle's name, not surface
# as an AttributeError deep in the SDK.
OBJECT_SECTIONS = ("files", "encoders", "index", "rerank", "preprocess", "embedding", "model", "libraries", "quality",
                   "selfcheck")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Bounds on what a manifest may ask of the loader: beyond them a value is an attack or a corruption, never a
# real bundle (each would otherwise cost gigabytes at load or overflow a C integer in hnswlib / SQLite).
MAX_INT = 2**63 - 1  # every integer fits a signed 64-bit C integer
MAX_DEPTH = 32  # JSON nesting
MAX_STRING = 1 << 20  # characters in one manifest string
MAX_NAME = 4096  # characters in a file name
MAX_DIM = 65_536  # embedding / token width
MAX_M = 1024  # hnswlib graph degree
MAX_EF = 100_000  # hnswlib beam widths
MAX_ELEMENTS = 1 << 34  # recipes in one index (labels too)
MAX_CANDIDATES = 100_000  # re-ranked candidates
MAX_SELFCHECK = 100_000  # self-check reference inputs


def check_limits(d: Any, where: str, path: str = "manifest", depth: int = 0) -> None:
    """Refuse nesting deeper than MAX_DEPTH, integers outside int64 and overlong strings anywhere in `d`,
    naming the field (e.g. `index.max_elements`)."""
    if depth > MAX_DEPTH:
        raise BundleError(f"{where}: {path} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(d, Mapping):
        for k, v in d.items():
            if not isinstance(k, str) or len(k) > MAX_NAME:
                raise BundleError(f"{where}: {path} has an invalid key ({str(k)[:40]!r}...)")
            check_limits(v, where, f"{path}.{k}" if path != "manifest" else k, depth + 1)
    elif isinstance(d, list):
        for i, v in enumerate(d):
            check_limits(v, where, f"{path}[{i}]", depth + 1)
    elif _is_int(d) and not -MAX_INT - 1 <= d <= MAX_INT:
        raise BundleError(f"{where}: manifest '{path}' is out of range (a 64-bit integer), got {str(d)[:24]}...")
    elif isinstance(d, str) and len(d) > MAX_STRING:
        raise BundleError(f"{where}: manifest '{path}' is too long ({len(d)} characters > {MAX_STRING})")


def _bounded(section: str, **values: int) -> None:
    """ValueError naming the first of `values` (name=value) above its bound in _BOUNDS."""
    for name, value in values.items():
        bound = _BOUNDS[name]
        if value > bound:
            raise ValueError(f"{section}: {name} must be <= {bound}, got {value}")


_BOUNDS = {"dim": MAX_DIM, "M": MAX_M, "ef_construction": MAX_EF, "ef_search": MAX_EF, "count": MAX_ELEMENTS,
           "max_elements": MAX_ELEMENTS, "next_label": MAX_ELEMENTS, "candidates": MAX_CANDIDATES}


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
        _bounded("index", dim=self.dim, M=self.M, ef_construction=self.ef_construction, ef_search=self.ef_search,
                 count=self.count, max_elements=self.max_elements, next_label=self.next_label)

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
    enabled: bool = True  # False: `rerank=True` refused; extra "disabled_reason" says why, "calibration" how weight was chosen
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not know

    def __post_init__(self) -> None:
        if self.kind not in RERANK_KINDS:
            raise ValueError(f"rerank: kind must be one of {RERANK_KINDS}, got {self.kind!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"rerank: weight must be in [0, 1], got {self.weight}")
        if self.candidates < 1 or self.dim < 1:
            raise ValueError("rerank: candidates and dim must be >= 1")
        _bounded("rerank", dim=self.dim, candidates=self.candidates)
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
class EmbeddingSection:
    """The manifest's `embedding`: the space the encoders and the index share."""

    dim: int
    metric: str = "cosine"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> EmbeddingSection:
        d = _obj(d, where, "embedding")
        if not _is_int(d.get("dim")) or not 0 < d["dim"] <= MAX_DIM:
            raise BundleError(f"{where}: manifest 'embedding.dim' is missing or invalid (an integer in [1, "
                              f"{MAX_DIM}])")
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
        # 0 or below would pass any encoder: the check switched off by the manifest.
        if not _is_num(mc) or not 0 < mc <= 1:
            raise BundleError(f"{where}: selfcheck min_cosine must be a number in (0, 1], got {mc!r}")
        count = d.get("count", 0)
        if not _is_int(count) or not 0 <= count <= MAX_SELFCHECK:
            raise BundleError(f"{where}: selfcheck count must be an integer in [0, {MAX_SELFCHECK}], got {count!r}")
        expected = d.get("expected") or {}
        if not isinstance(expected, Mapping) or not all(map(_is_num, expected.values())):
            raise BundleError(f"{where}: selfcheck expected must map encoder names to cosines")
        return cls(d["inputs"], d["fp32_embeddings"], count, float(mc), dict(expected), str(d.get("exported_on", "")),
                   _selfcheck_dtype(d, where))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "fp32_embeddings": self.fp32_embeddings, "count": self.count,
                "min_cosine": self.min_cosine, "expected": dict(self.expected), "exported_on": self.exported_on,
                "inputs_dtype": self.inputs_dtype}


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
        check_limits(d, where)
        for key in OBJECT_SECTIONS:
            if d.get(key) is not None:
                _obj(d[key], where, key)
        _check_quality(d.get("quality"), where)
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

    def referenced(self) -> dict[str, str]:
        """Every bundle file a reader opens -> what it is (each must be listed in `files`, and so hashed)."""
        out = {e.file: f"encoder {n!r}" for n, e in self.encoders.items()}
        if self.index is not None:
            out.update({self.index.file: "index file", self.index.store: "index store"})
        if self.rerank is not None:
            out.update({rel: "re-rank file" for rel in self.rerank.files()})
        if self.selfcheck is not None:
            out.update({self.selfcheck.inputs: "self-check data", self.selfcheck.fp32_embeddings: "self-check data"})
        return out

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


def _check_quality(q: Any, where: str) -> None:
    """`quality`: variant -> an object of metrics (readers index into each variant's entry)."""
    for variant, v in (q or {}).items():
        if v is not None and not isinstance(v, Mapping):
            raise BundleError(f"{where}: manifest 'quality.{variant}' must be an object, got {type(v).__name__}")


_TOP_KEYS = {"format", *(f.name for f in fields(Manifest) if f.name != "extra")}
