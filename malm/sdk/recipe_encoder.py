"""Encode recipes on the device with the bundle's ONNX recipe encoder (no torch), for `add_recipes`.

Export writes `encoders/recipe_fp32.onnx` (`title` [N,T], `ingredients` [N,Ni,L], `instructions` [N,Ns,L]
int64 → `embedding` [N,D]; optionally `tokens` [N,S,Dt] + `token_mask` [N,S]), with `--int8` also
`encoders/recipe_int8.onnx` and the recipe self-check data, and `vocab.json`. The text limits come from the
manifest's `tokenizer` section (bundles without it: the model's input shapes), so tokenization matches what the
model was exported with (docs/bundle-format.md, "Tokenizer").

The variant is chosen as for the image encoder: `variant="auto"` prefers int8 on the CPU (and TensorRT)
execution providers and fp32 on CUDA / CoreML, and an int8 encoder must pass the recipe self-check on this
machine (mean cosine to the bundle's fp32 reference embeddings of held-out recipes >= `min_cosine`), or the next
variant runs, with one warning line.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from malm import cpu
from malm.edge_index.builder import Encoded
from malm.edge_index.records import RecipeRecord
from malm.errors import BundleError, MalmError
from malm.manifest import DEFAULT_MIN_COSINE, RecipeSelfCheckSection
from malm.sdk.backends.ort import COREML, CUDA, OrtSession, available_providers, select_providers
from malm.sdk.bundle_loader import Bundle
from malm.sdk.selfcheck import SelfCheckError
from malm.text import TextLimits, Vocabulary, encode_recipe

log = logging.getLogger("malm.sdk")
INPUTS = ("title", "ingredients", "instructions")
RECIPE_ENCODERS = {"int8": "recipe_int8", "fp32": "recipe_fp32"}  # variant -> manifest encoder name
VARIANTS = ("auto", *RECIPE_ENCODERS)


def auto_order(first_provider: str) -> tuple[str, ...]:
    """Recipe-encoder variants best first for the session's first execution provider (as the image side:
    CUDA / CoreML run QDQ int8 slowly, everything else takes int8)."""
    return ("fp32", "int8") if first_provider in (CUDA, COREML) else ("int8", "fp32")


@dataclass(frozen=True)
class RecipeSelfCheck:
    """What the recipe self-check found for the encoder that runs (and the ones it fell back from)."""

    encoder: str  # the variant that runs: "int8" or "fp32"
    status: str  # "passed" | "failed" | "no_data" (a bundle without recipe self-check data)
    cosine: float | None
    min_cosine: float
    cpu: str
    rejected: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rejected"] = [dict(r) for r in self.rejected]
        return d


def _limits(bundle: Bundle, session: OrtSession) -> TextLimits:
    """The tokenizer's limits: the manifest's `tokenizer`, checked against the model's input shapes."""
    t, i, s = (session.input_shape(n) for n in INPUTS)
    try:
        from_model = TextLimits(max_title_tokens=int(t[1]), max_ingredients=int(i[1]),  # type: ignore[arg-type]
                                max_instructions=int(s[1]), max_tokens=int(i[2]))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BundleError(f"bundle {bundle.root}: recipe encoder inputs need static text dims, got {t} {i} {s}") \
            from None
    section = bundle.sections.tokenizer
    if section is None:
        return from_model
    stated = TextLimits(section.max_title_tokens, section.max_ingredients, section.max_instructions,
                        section.max_tokens)
    if stated != from_model or int(s[2]) != section.max_tokens:  # type: ignore[arg-type]
        raise BundleError(f"bundle {bundle.root}: manifest tokenizer limits {stated.to_dict()} do not match the recipe "
                          f"encoder's input shapes {from_model.to_dict()}")
    return stated


def _selfcheck_arrays(bundle: Bundle, sc: RecipeSelfCheckSection) -> tuple[dict[str, np.ndarray], np.ndarray]:
    for rel in sc.files():
        if not bundle.listed(rel):
            raise BundleError(f"bundle {bundle.root}: recipe self-check file {rel!r} is not listed (and hashed) in the "
                              "manifest")
    try:
        ids = {k: np.load(io.BytesIO(bundle.read_bytes(getattr(sc, k))), allow_pickle=False) for k in INPUTS}
        ref = np.load(io.BytesIO(bundle.read_bytes(sc.fp32_embeddings)), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BundleError(f"bundle {bundle.root}: recipe self-check data cannot be read ({e})") from None
    n = len(ref) if ref.ndim == 2 else -1
    if (any(a.dtype.kind not in "iu" or len(a) != n for a in ids.values()) or ref.dtype != np.float32
            or ref.shape[1:] != (bundle.dim,)):
        raise BundleError(f"bundle {bundle.root}: recipe self-check data do not fit (ids "
                          f"{[(a.shape, str(a.dtype)) for a in ids.values()]}, embeddings {ref.shape} {ref.dtype}; "
                          f"expected int ids and float32 [N, {bundle.dim}])")
    return {k: v.astype(np.int64) for k, v in ids.items()}, ref


class OnnxRecipeEncoder:
    """`encode_fn` for `malm.edge_index.add_recipes`, backed by ONNX Runtime."""

    def __init__(self, bundle: Bundle, threads: int | None = None, variant: str = "auto",
                 strict_selfcheck: bool = False) -> None:
        if variant not in VARIANTS:
            raise MalmError(f"unknown recipe encoder variant {variant!r}; one of {', '.join(VARIANTS)}")
        if not bundle.encoder("recipe_fp32") or not bundle.listed("vocab.json"):
            raise BundleError(f"bundle {bundle.root}: has no ONNX recipe encoder + vocab.json to encode recipes "
                              "on the device; pass --checkpoint to encode with the trained model")
        self.bundle, self.threads = bundle, threads
        first = select_providers(available_providers())[0]
        present = [v for v in auto_order(first) if bundle.encoder(RECIPE_ENCODERS[v])]
        if variant != "auto":
            if variant not in present:
                raise BundleError(f"bundle {bundle.root}: has no {variant} recipe encoder (has: {', '.join(present)})")
            present = [variant]
        self.variant, self.session, self.self_check = self._choose(present, strict_selfcheck)
        if set(INPUTS) - set(self.session.input_names) or "embedding" not in self.session.output_names:
            raise BundleError(f"bundle {bundle.root}: recipe encoder has inputs {self.session.input_names}, "
                              f"outputs {self.session.output_names}; expected {INPUTS} -> embedding")
        vocab = bundle.sections.tokenizer.vocab if bundle.sections.tokenizer else "vocab.json"
        if not bundle.listed(vocab):
            raise BundleError(f"bundle {bundle.root}: tokenizer vocabulary {vocab!r} is not listed in the manifest")
        self.vocab = Vocabulary.load(bundle.path(vocab))
        self.limits = _limits(bundle, self.session)
        self.with_tokens = {"tokens", "token_mask"} <= set(self.session.output_names)

    def _session(self, variant: str) -> OrtSession:
        entry = self.bundle.encoder(RECIPE_ENCODERS[variant])
        assert entry is not None  # only variants the bundle has are tried
        if not self.bundle.listed(entry.file):
            raise BundleError(f"bundle {self.bundle.root}: recipe encoder {entry.file!r} is not listed (and hashed) in "
                              "the manifest")
        return OrtSession(self.bundle.path(entry.file), threads=self.threads,
                          model_bytes=self.bundle.read_bytes(entry.file))

    def _choose(self, order: list[str], strict: bool) -> tuple[str, OrtSession, RecipeSelfCheck]:
        """The first variant whose self-check passes on this machine; the last one runs whatever its result."""
        sc = self.bundle.sections.recipe_selfcheck
        data = _selfcheck_arrays(self.bundle, sc) if sc is not None else None
        min_cos = sc.min_cosine if sc is not None else DEFAULT_MIN_COSINE
        rejected: list[dict[str, Any]] = []
        for i, variant in enumerate(order):
            last = i + 1 == len(order)
            if data is None and variant == "int8" and cpu.int8_may_saturate() and not last:
                rejected.append({"encoder": variant, "cosine": None, "reason": "no recipe self-check data; int8 may "
                                 "saturate on x86 without VNNI"})
                continue
            session = self._session(variant)
            cos = self._measure(session, data) if data is not None else None
            if cos is None or cos >= min_cos:
                break
            rejected.append({"encoder": variant, "cosine": round(cos, 4),
                             "reason": f"mean cosine to the bundle's fp32 reference < {min_cos}"})
            if strict:
                raise SelfCheckError(f"bundle {self.bundle.root}: the {variant} recipe encoder disagrees with fp32 on "
                                     f"this CPU ({cpu.description()}): mean cosine {cos:.4f} < {min_cos} (strict "
                                     "self-check)")
            if last:
                break
        status = "no_data" if cos is None else "passed" if cos >= min_cos else "failed"
        if rejected:
            log.warning("malm: recipe encoder %s not used on this CPU (%s): %s; using %s", rejected[0]["encoder"],
                        cpu.description(), "; ".join(r["reason"] for r in rejected), variant)
        return variant, session, RecipeSelfCheck(variant, status, cos, min_cos, cpu.description(), tuple(rejected))

    @staticmethod
    def _measure(session: OrtSession, data: tuple[dict[str, np.ndarray], np.ndarray]) -> float:
        ids, ref = data
        try:
            got = session.run(ids, ["embedding"])["embedding"].astype(np.float32)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types for inputs that do not fit
            raise BundleError(f"recipe encoder {session.path}: the bundle's recipe self-check inputs do not fit it "
                              f"({type(e).__name__}: {e})") from None
        got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
        ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        return float((got * ref).sum(axis=1).mean())

    def __call__(self, records: Sequence[RecipeRecord]) -> Encoded:
        arrays = [encode_recipe(r.title, r.ingredients, r.instructions, self.vocab, self.limits) for r in records]
        feeds = {k: np.stack([a[k] for a in arrays]).astype(np.int64) for k in INPUTS}
        names = ["embedding", "tokens", "token_mask"] if self.with_tokens else ["embedding"]
        out = self.session.run(feeds, names)
        if not self.with_tokens:
            return Encoded(out["embedding"])
        mask = out["token_mask"].astype(bool)
        return Encoded(out["embedding"], [tok[m] for tok, m in zip(out["tokens"], mask, strict=True)])
