"""`Retriever`: photo in, recipes out, on the device.

    from malm import Retriever
    r = Retriever.load("bundle/")
    for hit in r.search("photo.jpg", k=5):
        print(hit.rank, hit.score, hit.title)

Thread safety: searches read an immutable snapshot (encoder, index, store, re-rank data) taken at their
start; `add_recipes` / `remove_recipes` write the bundle under a lock and then swap in a new snapshot, so
searches never see a half-updated index and never block on an update.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malm.cpu_features import cpu_features
from malm.edge_index import builder as _builder
from malm.edge_index.hnsw import HnswIndex
from malm.edge_index.records import RecipeRecord, RecordError, parse_record
from malm.edge_index.rerank import (
    LateInteractionScorer,
    LocalScorer,
    RerankSettings,
    TokenStore,
    disabled_reason,
    fuse,
)
from malm.edge_index.store import RecipeStore
from malm.errors import BundleError, ImageError, MalmError
from malm.preprocess import preprocess
from malm.sdk import selfcheck as _selfcheck
from malm.sdk.backends.base import EncoderOutput, ImageBackend
from malm.sdk.backends.choice import create_backend, encoder_file, explain_variant, targets, variants_present
from malm.sdk.backends.ort import OrtImageBackend, OrtSession
from malm.sdk.bundle_loader import Bundle, open_bundle
from malm.sdk.image_io import ImageInput, describe, load_image
from malm.sdk.recipe_encoder import OnnxRecipeEncoder
from malm.sdk.rerank_head import Candidates, MatchingHeadScorer
from malm.signing import TrustedKey, TrustPolicy


@dataclass(frozen=True)
class Hit:
    """One retrieved recipe."""

    rank: int  # 1-based
    recipe_id: str
    title: str
    score: float  # cosine similarity (fused with the local score when re-ranked)
    ingredients: tuple[str, ...]
    url: str = ""
    instructions: tuple[str, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "recipe_id": self.recipe_id, "title": self.title,
                "score": round(float(self.score), 6), "ingredients": list(self.ingredients), "url": self.url}


@dataclass(frozen=True)
class _Rerank:
    settings: RerankSettings
    tokens: TokenStore
    scorer: LocalScorer


@dataclass(frozen=True)
class _Snapshot:
    bundle: Bundle
    index: HnswIndex
    store: RecipeStore
    rerank: _Rerank | None


def _load_snapshot(root: Path, check_hashes: bool | str, threads: int | None,
                   policy: TrustPolicy | None = None) -> _Snapshot:
    bundle = open_bundle(root, check_hashes, policy=policy)
    section = bundle.index  # typed and validated by open_bundle (malm.manifest.IndexSection)
    # Both read once from the verified bytes (Bundle.read_bytes), into memory: never the file again.
    store = RecipeStore.from_bytes(bundle.read_bytes(section.store), str(bundle.path(section.store)))
    where = str(bundle.path(section.file))
    with bundle.open_stable(section.file) as f:  # the largest file: no copy beside hnswlib's when it can be shown
        index = HnswIndex.load_file(f, where, section.settings, store.labels()) if f is not None else \
            HnswIndex.load_bytes(bundle.read_bytes(section.file), where, section.settings, store.labels())
    rerank = None
    rs = bundle.sections.rerank
    if rs is not None:
        for rel in rs.files():
            if not bundle.listed(rel):
                raise BundleError(f"bundle {root}: re-rank file {rel!r} is not listed (and hashed) in the manifest")
        tokens = TokenStore.load(bundle.path(rs.tokens), bundle.path(rs.offsets))
        if tokens.dim != rs.dim:
            raise BundleError(f"bundle {root}: re-rank tokens have width {tokens.dim}, manifest 'rerank.dim' says "
                              f"{rs.dim}")
        scorer: LocalScorer
        if rs.kind == "matching_head":
            scorer = MatchingHeadScorer(OrtSession(bundle.path(str(rs.model)), threads=threads,
                                                   model_bytes=bundle.read_bytes(str(rs.model))), tokens.dim)
        else:
            scorer = LateInteractionScorer()
        rerank = _Rerank(rs, tokens, scorer)
    return _Snapshot(bundle, index, store, rerank)


class Retriever:
    """Image → recipes over a verified bundle. Build with `Retriever.load`."""

    def __init__(self, snapshot: _Snapshot, backend: ImageBackend, threads: int | None, check_hashes: bool | str,
                 self_check: _selfcheck.SelfCheck | None = None, policy: TrustPolicy | None = None) -> None:
        self._policy = policy
        self._snap = snapshot
        self._backend = backend
        self._self_check = self_check
        self._threads = threads
        self._check_hashes = check_hashes
        self._write_lock = threading.RLock()
        self._closed = False

    @classmethod
    def load(cls, bundle: str | os.PathLike[str], backend: str = "auto", variant: str = "auto",
             threads: int | None = None, verify: bool | str = True, strict_selfcheck: bool = False,
             trusted_keys: Iterable[TrustedKey] | None = None, require_signature: bool | None = None) -> Retriever:
        """Open `bundle` (verifying every file's sha256) and its image encoder.

        verify: True hashes each file once per (size, mtime, ctime, inode, device) and remembers it, so a restart
        does not re-hash a large index; "full" hashes every file on every load; False skips it.

        backend: "auto" | "onnxruntime" | "tensorrt" | "coreml"; variant: "auto" | "int8_cpu" | "int8" | "fp32"
        ("auto": int8_cpu on the CPU provider, int8 on TensorRT, fp32 on CUDA / CoreML);
        threads: intra-op threads of the encoder (None = the runtime's default).

        The encoder is self-checked against the bundle's fp32 reference embeddings once per (bundle, machine,
        backend) (`malm.sdk.selfcheck`); with variant "auto" one that disagrees is replaced by the next
        (int8_cpu -> int8 -> fp32) with a warning. strict_selfcheck: raise `SelfCheckError` instead.

        trusted_keys: Ed25519 public keys (`malm bundle keygen`'s .pub files) whose signature over the manifest
        (`manifest.sig`, `malm bundle sign`) is accepted; require_signature: refuse an unsigned bundle (default:
        when any key is trusted, or $MALM_REQUIRE_SIGNATURE=1; $MALM_TRUSTED_KEYS adds keys). A bundle whose
        signature does not verify is always refused.
        """
        root = Path(bundle)
        policy = TrustPolicy.resolve(trusted_keys, require_signature)
        snap = _load_snapshot(root, verify, threads, policy)

        tries = [_selfcheck.Target(*t) for t in targets(snap.bundle, backend, variant)]
        encoder, result = _selfcheck.choose(snap.bundle, tries, lambda v: create_backend(snap.bundle, backend, v,
                                                                                         threads),
                                            strict=strict_selfcheck)
        if variant == "auto" and isinstance(encoder, OrtImageBackend):
            # The self-check built the encoder by name: say why auto chose it, and whether it fell back.
            pick, why = explain_variant(snap.bundle, "auto", tries[0].device)
            if encoder.variant != pick:
                why += f"; {pick} disagreed with the fp32 reference in the self-check on this CPU, so {encoder.variant}"
            encoder.variant_reason = why
        return cls(snap, encoder, threads, verify, result, policy)

    # information ---------------------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        return self._snap.bundle

    @property
    def backend(self) -> ImageBackend:
        return self._backend

    @property
    def can_rerank(self) -> bool:
        rr = self._snap.rerank
        return rr is not None and rr.settings.enabled and self._backend.has_tokens

    @property
    def rerank_note(self) -> str | None:
        """Why `rerank=True` is refused here (None when it is not): what `malm query --rerank` prints."""
        try:
            self._check_rerank(self._snap)
        except MalmError as e:
            return str(e)
        return None

    def __len__(self) -> int:
        return len(self._snap.index)

    @property
    def self_check(self) -> _selfcheck.SelfCheck | None:
        return self._self_check

    def info(self) -> dict[str, Any]:
        """What this retriever runs with, JSON-ready: backend, provider, encoder and variant (and why), its
        self-check on this machine, the CPU path, the bundle's verification. `malm doctor --bundle` prints it;
        sections may be added, keys never renamed."""
        snap, backend = self._snap, self._backend
        session = getattr(backend, "session", None)
        manifest = snap.bundle.manifest
        return {
            "bundle": str(snap.bundle.root), "backend": backend.name, "variant": backend.variant,
            "encoder": encoder_file(snap.bundle, backend.name, backend.variant),
            "device": backend.device, "recipes": len(snap.index), "dim": snap.bundle.dim, "rerank": self.can_rerank,
            "rerank_weight": snap.rerank.settings.weight if snap.rerank else None,
            "rerank_note": self.rerank_note,
            "selfcheck": self._self_check.to_dict() if self._self_check else None,
            # The execution providers the ONNX session really has, in order (ORT drops any it cannot start).
            "providers": list(getattr(session, "providers", [backend.device])),
            "variant_reason": getattr(backend, "variant_reason", f"backend {backend.name} asked for"),
            "variants_present": variants_present(snap.bundle),
            "threads": self._threads,
            "verification": {"mode": snap.bundle.verification, "files": len(manifest.get("files") or {}),
                             "format_version": manifest.get("format_version"),
                             "signed_by": snap.bundle.signed_by,
                             "malm_version": manifest.get("malm_version")},
            "cpu": cpu_features().to_dict(),
        }

    # lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the recipe store's SQLite connection and the encoder session; idempotent.

        Call it (or use `with Retriever.load(...) as r:`) when no search is running any more; a closed
        retriever refuses further calls with a clear error instead of failing deep inside SQLite.
        """
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._snap.store.close()
            self._backend = _ClosedBackend(self._backend)

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_snapshot(self) -> _Snapshot:
        if self._closed:
            raise MalmError(f"retriever for {self._snap.bundle.root} is closed; load the bundle again")
        return self._snap

    # search ------------------------------------------------------------------------------------------
    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalized embeddings [N, D] of decoded images (raises `ImageError` on the first bad one)."""
        cfg = self._open_snapshot().bundle.preprocess
        batch = np.stack([preprocess(load_image(im, cfg.max_pixels, cfg.draft_side), cfg) for im in images])
        return self._backend.encode(batch).embedding

    def search(self, image: ImageInput, k: int = 10, rerank: bool = False,
               exclude_ingredients: Iterable[str] = ()) -> list[Hit]:
        """The top-k recipes for one photo; raises `ImageError` if it cannot be read."""
        result = self.search_batch([image], k=k, rerank=rerank, exclude_ingredients=exclude_ingredients)[0]
        if isinstance(result, MalmError):
            raise result
        return result

    def search_batch(self, images: Sequence[ImageInput], k: int = 10, rerank: bool = False,
                     exclude_ingredients: Iterable[str] = (), batch_size: int = 16) -> list[list[Hit] | MalmError]:
        """One result per image, in order: its hits, or the `MalmError` saying why it could not be read."""
        if k < 1:
            raise MalmError(f"k must be >= 1, got {k}")
        snap = self._open_snapshot()  # one consistent view for the whole call
        if rerank:
            self._check_rerank(snap)
        excluded: set[int] = set()
        for term in exclude_ingredients:
            excluded |= snap.store.labels_with_ingredient(term)
        cfg = snap.bundle.preprocess
        results: list[list[Hit] | MalmError] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels: list[np.ndarray] = []
            slots: list[int] = []
            part: list[list[Hit] | MalmError] = [[] for _ in chunk]
            for i, im in enumerate(chunk):
                try:
                    pixels.append(preprocess(load_image(im, cfg.max_pixels, cfg.draft_side), cfg))
                    slots.append(i)
                except MalmError as e:
                    part[i] = e
                except (OSError, ValueError) as e:  # e.g. a PIL image whose lazy decoding fails now
                    part[i] = ImageError(f"image {describe(im)}: cannot be preprocessed ({e})")
            if pixels:
                out = self._backend.encode(np.stack(pixels), tokens=rerank)
                if not np.isfinite(out.embedding).all():  # a model (or preprocessing) from the bundle gave NaN
                    raise BundleError(f"bundle {snap.bundle.root}: the image encoder gave non-finite embeddings")
                for j, i in enumerate(slots):
                    tokens = out.tokens[j] if out.tokens is not None else None
                    part[i] = self._rank(snap, out.embedding[j], tokens, k, rerank, excluded)
            results.extend(part)
        return results

    def candidate_scores(self, images: Sequence[ImageInput], batch_size: int = 16) -> list[Candidates | MalmError]:
        """Per image, the global top candidates (as many as re-ranking re-scores) with their global and local
        scores: what `search(rerank=True)` fuses with the bundle's weight. Export calibrates the weight with it
        (malm/export/rerank_calibration.py), so the weight is chosen on exactly the SDK's numbers. Works on a
        bundle whose re-ranking is disabled too (that is how it is measured)."""
        snap = self._open_snapshot()
        self._check_rerank(snap, allow_disabled=True)
        assert snap.rerank is not None  # checked above
        n_cand = snap.rerank.settings.candidates
        cfg = snap.bundle.preprocess
        results: list[Candidates | MalmError] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels: list[np.ndarray] = []
            slots: list[int] = []
            part: list[Candidates | MalmError] = [MalmError("not read") for _ in chunk]
            for i, im in enumerate(chunk):
                try:
                    pixels.append(preprocess(load_image(im, cfg.max_pixels, cfg.resize), cfg))
                    slots.append(i)
                except MalmError as e:
                    part[i] = e
                except (OSError, ValueError) as e:
                    part[i] = ImageError(f"image {describe(im)}: cannot be preprocessed ({e})")
            if pixels:
                out = self._backend.encode(np.stack(pixels), tokens=True)
                for j, i in enumerate(slots):
                    assert out.tokens is not None  # _check_rerank: the encoder has tokens
                    labels, global_, local = self._candidates(snap, out.embedding[j], out.tokens[j], n_cand, set())
                    records = snap.store.get(labels)
                    part[i] = Candidates(tuple(records[la].id if la in records else "" for la in labels),
                                         global_, local if local is not None else global_.copy())
            results.extend(part)
        return results

    def _check_rerank(self, snap: _Snapshot, allow_disabled: bool = False) -> None:
        if snap.rerank is None:
            raise MalmError(f"bundle {snap.bundle.root}: has no re-ranking data (build the index with a model "
                            "that gives recipe token features); search without rerank")
        if not snap.rerank.settings.enabled and not allow_disabled:
            reason = disabled_reason(snap.rerank.settings)
            raise MalmError(f"bundle {snap.bundle.root}: re-ranking is disabled in this bundle ({reason}); "
                            "search without rerank")
        if not self._backend.has_tokens:
            raise MalmError(f"the {self._backend.name} {self._backend.variant} image encoder has no 'tokens' "
                            "output, which re-ranking needs; search without rerank")

    @staticmethod
    def _candidates(snap: _Snapshot, embedding: np.ndarray, tokens: np.ndarray | None, n: int,
                    excluded: set[int]) -> tuple[list[int], np.ndarray, np.ndarray | None]:
        """The global top `n` (labels, scores) and, given image tokens, each one's local score."""
        found = snap.index.search(embedding[None], n, exclude=excluded)[0]
        labels = [label for label, _ in found]
        scores = np.array([s for _, s in found], np.float32)
        if tokens is None or snap.rerank is None or not labels:
            return labels, scores, None
        rr = snap.rerank
        if rr.settings.kind == "late_interaction" and tokens.shape[-1] != rr.tokens.dim:
            raise BundleError(f"bundle {snap.bundle.root}: image tokens have width {tokens.shape[-1]}, its "
                              f"recipe tokens {rr.tokens.dim}: re-ranking cannot compare them")
        recipe_tokens = [rr.tokens.get(label) for label in labels]
        local = rr.scorer(tokens, recipe_tokens)
        # Recipes added without token features keep their global score instead of a local 0.
        has = np.array([len(t) > 0 for t in recipe_tokens])
        return labels, scores, np.where(has, local, scores).astype(np.float32)

    def _rank(self, snap: _Snapshot, embedding: np.ndarray, tokens: np.ndarray | None, k: int, rerank: bool,
              excluded: set[int]) -> list[Hit]:
        rr = snap.rerank if rerank else None
        n_cand = max(k, rr.settings.candidates) if rr is not None else k
        labels, scores, local = self._candidates(snap, embedding, tokens if rr is not None else None, n_cand,
                                                 excluded)
        if rr is not None and local is not None:
            scores = fuse(scores, local, rr.settings.weight)
            # Stable sort: ties keep the global order, so results are deterministic.
            order = np.argsort(-scores, kind="stable")
            labels = [labels[i] for i in order]
            scores = scores[order]
        labels, scores = labels[:k], scores[:k]
        records = snap.store.get(labels)
        return [Hit(rank=r + 1, recipe_id=records[label].id, title=records[label].title, score=float(s),
                    ingredients=records[label].ingredients, url=records[label].url,
                    instructions=records[label].instructions)
                for r, (label, s) in enumerate(zip(labels, scores, strict=True)) if label in records]

    # on-device updates ---------------------------------------------------------------------------------
    def add_recipes(self, records: Iterable[RecipeRecord | dict[str, Any]],
                    encode_fn: _builder.EncodeFn | None = None, replace_existing: bool = False) -> _builder.IndexReport:
        """Add recipes to the bundle (written atomically) and to this retriever.

        `encode_fn` defaults to the bundle's ONNX recipe encoder (`encoders/recipe_fp32.onnx` + `vocab.json`).
        """
        recs: list[RecipeRecord] = []
        for n, r in enumerate(records):
            try:
                recs.append(r if isinstance(r, RecipeRecord) else parse_record(r))
            except RecordError as e:
                raise MalmError(f"recipe #{n}: {e}") from None
        with self._write_lock:
            self._open_snapshot()
            if encode_fn is None:
                encode_fn = OnnxRecipeEncoder(self._snap.bundle, self._threads)
            report = _builder.add_recipes(self._snap.bundle.root, recs, encode_fn, replace_existing=replace_existing)
            self._reload()
        return report

    def remove_recipes(self, ids: Iterable[str]) -> _builder.IndexReport:
        with self._write_lock:
            report = _builder.remove_recipes(self._open_snapshot().bundle.root, ids)
            self._reload()
        return report

    def reload(self) -> None:
        """Pick up changes another process made to the bundle."""
        with self._write_lock:
            self._open_snapshot()
            self._reload()

    def _reload(self) -> None:
        new = _load_snapshot(self._snap.bundle.root, self._check_hashes, self._threads, self._policy)
        self._snap = new  # one reference assignment: searches see the old or the new snapshot


class _ClosedBackend:
    """Stands in for a closed retriever's encoder: keeps its description (name, variant, device, for
    `info()`), drops the session so ONNX Runtime can free it."""

    def __init__(self, backend: ImageBackend) -> None:
        self.name, self.variant, self.device = backend.name, backend.variant, backend.device
        self.has_tokens = False

    def encode(self, images: np.ndarray, tokens: bool = False) -> EncoderOutput:
        raise MalmError("this retriever is closed; load the bundle again")
