"""Build and update a bundle's recipe index from recipe records and an encoder function.

Torch-free on purpose: the caller hands in `encode_fn(records) -> embeddings` (or `Encoded` with token
features for re-ranking): the trained torch recipe encoder in `malm index build`, the bundle's ONNX
recipe encoder on a device, a fake one in tests.

Crash safety: new files are written under names the live manifest does not reference (the index files
alternate between two names), the manifest is replaced atomically last, and only then are the old files
removed. A kill at any point leaves a bundle that verifies. Writers are serialized by `BundleWriter`'s
file lock (across processes) and a per-bundle lock (across threads).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from malm.bundle import BundleWriter, load_manifest, read_manifest, safe_relpath, verify
from malm.edge_index.hnsw import HnswIndex, IndexSettings, normalize_rows
from malm.edge_index.records import ReadReport, RecipeRecord
from malm.edge_index.rerank import OFFSETS_FILE, TOKENS_FILE, RerankSettings, TokenStore, write_tokens
from malm.edge_index.store import RecipeStore
from malm.errors import BundleError, MalmError
from malm.manifest import EmbeddingSection, EncoderEntry, IndexSection
from malm.model_card import refresh_model_card

INDEX_FILES = ("index/recipes.hnsw", "index/recipes.alt.hnsw")
STORE_FILES = ("index/recipes.sqlite", "index/recipes.alt.sqlite")
TOKEN_FILES = ((TOKENS_FILE, OFFSETS_FILE), ("rerank/recipe_tokens.alt.npy", "rerank/recipe_offsets.alt.npy"))


@dataclass(frozen=True)
class Encoded:
    """What an encoder returns for a batch: L2-normalizable embeddings and optional token features."""

    embeddings: np.ndarray  # [B, D]
    tokens: list[np.ndarray] | None = None  # one [S_i, Dt] array per recipe (padding removed)


EncodeFn = Callable[[Sequence[RecipeRecord]], "np.ndarray | Encoded"]
Progress = Callable[[int], None]


@dataclass
class IndexReport:
    """What a build/add/remove did, for the CLI and the manifest."""

    indexed: int = 0
    removed: int = 0
    count: int = 0
    read: ReadReport = field(default_factory=ReadReport)
    not_found: list[str] = field(default_factory=list)
    settings: IndexSettings | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "removed": self.removed, "count": self.count,
                "skipped": dict(self.read.skipped), "not_found": self.not_found,
                "index": self.settings.to_dict() if self.settings else None}


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _bundle_lock(root: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(root.resolve(), threading.Lock())


def encode_records(records: Sequence[RecipeRecord], encode_fn: EncodeFn, batch_size: int = 256,
                   progress: Progress | None = None) -> Encoded:
    """Run `encode_fn` over `records` in batches; checks shapes and finiteness of what comes back."""
    if batch_size < 1:
        raise MalmError(f"batch size must be >= 1, got {batch_size}")
    embs: list[np.ndarray] = []
    toks: list[np.ndarray] | None = None
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        out = encode_fn(batch)
        enc = out if isinstance(out, Encoded) else Encoded(np.asarray(out))
        emb = np.asarray(enc.embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(batch):
            raise MalmError(f"recipe encoder returned shape {emb.shape} for a batch of {len(batch)}")
        embs.append(normalize_rows(emb))
        if enc.tokens is not None:
            if len(enc.tokens) != len(batch):
                raise MalmError(f"recipe encoder returned tokens for {len(enc.tokens)} of {len(batch)} recipes")
            toks = (toks or []) + [np.asarray(t, dtype=np.float16) for t in enc.tokens]
        elif toks is not None:
            raise MalmError("recipe encoder returned token features for some batches only")
        if progress is not None:
            progress(len(batch))
    if not embs:
        return Encoded(np.zeros((0, 0), np.float32), None)
    return Encoded(np.concatenate(embs, axis=0), toks)


def _other(names: Sequence[Any], current: Any) -> Any:
    return names[1] if current == names[0] else names[0]


class _Staged:
    """The bundle's index opened for update, staged in a temp dir inside the bundle (same filesystem)."""

    def __init__(self, bw: BundleWriter, fresh: IndexSettings | None) -> None:
        self.bw = bw
        self.root = bw.root
        # We hold the bundle's write lock: any staging dir still here is from a writer that was killed.
        for stale in bw.root.glob(".index-staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        typed = bw.sections()
        section = typed.index
        if fresh is None and section is None:  # checked before the staging dir exists: nothing to clean up
            raise BundleError(f"bundle {self.root}: has no recipe index yet (run `malm index build`)")
        self.tmp = Path(tempfile.mkdtemp(prefix=".index-staging-", dir=bw.root))
        self.old_files: list[str] = []
        if fresh is not None:  # (no section and no settings was refused above)
            self.index = HnswIndex.create(fresh)
            self.store = RecipeStore.create(self.tmp / "store.sqlite")
            self.tokens: dict[int, np.ndarray] = {}
            self.token_dim: int | None = None
            self.cur_index = section.file if section else None
            self.cur_store = section.store if section else None
            rr = typed.rerank
            self.cur_tokens = (rr.tokens, rr.offsets) if rr else None
            for rel in (self.cur_index, self.cur_store, *(self.cur_tokens or ())):
                if rel:
                    self.old_files.append(rel)
            return
        # Update: copy the store (SQLite edits in place would change the live file's hash).
        assert section is not None  # an update without a section was refused above
        verify(self.root, bw.manifest)
        settings = section.settings
        self.cur_index, self.cur_store = section.file, section.store
        shutil.copyfile(safe_relpath(self.root, self.cur_store), self.tmp / "store.sqlite")
        self.store = RecipeStore.open(self.tmp / "store.sqlite", writable=True)
        self.index = HnswIndex.load(safe_relpath(self.root, self.cur_index), settings, self.store.labels())
        rs = typed.rerank
        self.cur_tokens = None
        self.tokens = {}
        self.token_dim = None
        if rs is not None:
            self.cur_tokens = (rs.tokens, rs.offsets)
            ts = TokenStore.load(safe_relpath(self.root, rs.tokens), safe_relpath(self.root, rs.offsets))
            self.token_dim = ts.dim
            self.tokens = {label: np.asarray(ts.get(label)) for label in self.index.labels()}
        self.old_files = [self.cur_index, self.cur_store, *(self.cur_tokens or ())]

    def add(self, records: Sequence[RecipeRecord], enc: Encoded) -> list[int]:
        if len(records) == 0:
            return []
        labels = self.index.add(enc.embeddings)
        self.store.insert(labels, records)
        if enc.tokens is not None:
            dim = int(enc.tokens[0].shape[1]) if enc.tokens and enc.tokens[0].ndim == 2 else None
            if self.token_dim is not None and dim is not None and dim != self.token_dim:
                raise MalmError(f"recipe tokens have width {dim}, the bundle's re-rank data has {self.token_dim}")
            self.token_dim = self.token_dim or dim
            self.tokens.update(zip(labels, enc.tokens, strict=True))
        # An encoder without token output (e.g. the ONNX recipe encoder on a device) still adds recipes to a
        # bundle with re-ranking data: they own no token rows, and re-ranking keeps their global score.
        return labels

    def remove(self, labels: Sequence[int]) -> int:
        n = self.index.remove(labels)
        self.store.delete(labels)
        for label in labels:
            self.tokens.pop(int(label), None)
        return n

    def commit(self, extra_index: dict[str, Any]) -> IndexSettings:
        bw = self.bw
        new_index = _other(INDEX_FILES, self.cur_index)
        new_store = _other(STORE_FILES, self.cur_store)
        settings = self.index.save(self.tmp / "index.hnsw")
        self.store.close()
        typed = bw.sections()
        emb = typed.embedding
        if emb is not None and emb.dim != settings.dim:
            raise BundleError(f"bundle {self.root}: recipe embeddings have dim {settings.dim}, "
                              f"the bundle's encoders have dim {emb.dim}")
        bw.add_file(self.tmp / "index.hnsw", new_index, move=True)
        bw.add_file(self.tmp / "store.sqlite", new_store, move=True)
        bw.set_embedding(replace(emb, metric="cosine") if emb else EmbeddingSection(settings.dim))
        old_index = typed.index.extra if typed.index else {}
        bw.set_index(IndexSection(new_index, new_store, settings, {**old_index, **extra_index}))
        keep = {new_index, new_store}
        if self.token_dim is not None:
            new_tok, new_off = _other(TOKEN_FILES, self.cur_tokens)
            paths = write_tokens(self.tmp, self.tokens, settings.next_label, self.token_dim)
            bw.add_file(paths[0], new_tok, move=True)
            bw.add_file(paths[1], new_off, move=True)
            old = typed.rerank or RerankSettings(dim=self.token_dim)
            bw.set_rerank(replace(old, dim=self.token_dim, tokens=new_tok, offsets=new_off))
            keep |= {new_tok, new_off}
        else:
            bw.set_rerank(None)  # its token files are about to go
        for rel in self.old_files:
            if rel not in keep:
                bw.forget(rel)
        return settings

    def cleanup(self, committed: bool) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if committed:
            # The manifest no longer references them: safe to delete now.
            keep = set(self.bw.manifest.get("files", {}))
            for rel in self.old_files:
                if rel and rel not in keep:
                    try:
                        safe_relpath(self.root, rel).unlink(missing_ok=True)
                    except (OSError, BundleError):
                        pass


def _run(bundle: str | os.PathLike[str], fresh: IndexSettings | None,
         body: Callable[[_Staged], dict[str, Any]]) -> IndexSettings:
    root = Path(bundle)
    if fresh is None:
        # An update needs an existing bundle: check before BundleWriter, which would create a mistyped path.
        read_manifest(root)
    with _bundle_lock(root):
        committed = False
        staged: _Staged | None = None
        try:
            with BundleWriter(root) as bw:
                staged = _Staged(bw, fresh)
                extra = body(staged)
                settings = staged.commit(extra)
            committed = True
            refresh_model_card(root)
            return settings
        finally:
            if staged is not None:
                staged.cleanup(committed)


def build_index(bundle: str | os.PathLike[str], records: Iterable[RecipeRecord], encode_fn: EncodeFn, *,
                M: int = 32, ef_construction: int = 200, ef_search: int = 128, batch_size: int = 256,
                progress: Progress | None = None, report: ReadReport | None = None,
                extra: dict[str, Any] | None = None) -> IndexReport:
    """(Re)build the bundle's index and store from scratch from `records`."""
    recs = list(records)
    if not recs:
        raise MalmError("no valid recipes to index")
    enc = encode_records(recs, encode_fn, batch_size, progress)
    fresh = IndexSettings(dim=int(enc.embeddings.shape[1]), space="ip", M=M, ef_construction=ef_construction,
                          ef_search=ef_search)
    out = IndexReport(read=report or ReadReport())

    def body(st: _Staged) -> dict[str, Any]:
        st.index = HnswIndex.create(fresh, capacity=len(recs))
        st.add(recs, enc)
        out.indexed = len(recs)
        return dict(extra or {})

    out.settings = _run(bundle, fresh, body)
    out.count = out.settings.count
    return out


def add_recipes(bundle: str | os.PathLike[str], records: Iterable[RecipeRecord], encode_fn: EncodeFn, *,
                batch_size: int = 256, progress: Progress | None = None, report: ReadReport | None = None,
                replace_existing: bool = False) -> IndexReport:
    """Add recipes to an existing index; an id already indexed is skipped (or replaced if asked)."""
    root = Path(bundle)
    out = IndexReport(read=report or ReadReport())
    recs = list(records)
    section = load_manifest(root).index
    if section is None:
        raise BundleError(f"bundle {root}: has no recipe index yet (run `malm index build`)")
    store_rel = section.store
    # Encode before taking the write lock: it is the slow part and touches nothing in the bundle.
    try:
        with RecipeStore.open(safe_relpath(root, store_rel)) as s:
            existing = s.ids()
    except BundleError:
        existing = set()  # replaced by a concurrent writer just now: the check under the lock decides
    if not replace_existing:
        kept = [r for r in recs if r.id not in existing]
        for _ in range(len(recs) - len(kept)):
            out.read.skip("already_indexed")
        recs = kept
    enc = encode_records(recs, encode_fn, batch_size, progress)

    def body(st: _Staged) -> dict[str, Any]:
        nonlocal recs, enc
        present = st.store.labels_for_ids([r.id for r in recs])
        if replace_existing:
            st.remove(list(present.values()))
        elif present:
            # Indexed by another writer since we looked: skip them, as if they had been there before.
            keep = [i for i, r in enumerate(recs) if r.id not in present]
            for _ in range(len(recs) - len(keep)):
                out.read.skip("already_indexed")
            recs = [recs[i] for i in keep]
            enc = Encoded(enc.embeddings[keep], [enc.tokens[i] for i in keep] if enc.tokens is not None else None)
        if recs and enc.embeddings.shape[1] != st.index.dim:
            raise MalmError(f"recipe embeddings have dim {enc.embeddings.shape[1]}, the index has {st.index.dim}")
        st.add(recs, enc)
        out.indexed = len(recs)
        return {}

    out.settings = _run(root, None, body)
    out.count = out.settings.count
    return out


def remove_recipes(bundle: str | os.PathLike[str], ids: Iterable[str]) -> IndexReport:
    """Remove recipes by id (their index slots are reused by later adds)."""
    out = IndexReport()
    wanted = list(dict.fromkeys(ids))

    def body(st: _Staged) -> dict[str, Any]:
        found = st.store.labels_for_ids(wanted)
        out.not_found = [i for i in wanted if i not in found]
        out.removed = st.remove(list(found.values()))
        return {}

    out.settings = _run(bundle, None, body)
    out.count = out.settings.count
    return out


GIVEN_MATCHING_HEAD = "rerank/matching_head.onnx"  # where `index build --matching-head` copies it (as export does)


def shipped_matching_head(bundle: Path) -> str | None:
    """The bundle's matching-head ONNX written by `malm export --tokens`, if any (and listed in the manifest)."""
    if not (bundle / "manifest.json").is_file():
        return None
    manifest = load_manifest(bundle)
    entry = manifest.encoders.get("matching_head")
    return entry.file if entry and entry.file in manifest.files else None


def use_matching_head(bundle: Path, given: Path | None = None, shipped: str | None = None) -> None:
    """Re-rank the index with a matching head: `given` (an ONNX file, copied in) or the one export `shipped`."""
    if given is None and not shipped:
        return
    with BundleWriter(bundle) as bw:
        model = shipped
        if given is not None:
            model = GIVEN_MATCHING_HEAD
            bw.add_file(given, model)
            bw.set_encoder("matching_head", EncoderEntry(model, "onnx", "rerank", "fp32"))
        rerank = bw.sections().rerank
        if rerank is None:
            raise BundleError(f"bundle {bundle}: a matching head needs the index's re-rank tokens "
                              "(build the index with a recipe encoder that outputs tokens)")
        bw.set_rerank(replace(rerank, kind="matching_head", model=model))
    refresh_model_card(bundle)
