"""The recipe index: hnswlib over L2-normalized embeddings (inner product = cosine).

hnswlib does not save its own settings (space, dim, ef are lost by `save_index`; ef comes back as 10),
so `IndexSettings` lives in the bundle's manifest and `HnswIndex.load` checks the file against it.
Labels are the recipe store's integer keys; they only grow (`next_label`), so a label is never reused
even when `replace_deleted` recycles the slot of a removed recipe.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import hnswlib
import numpy as np

from malm._atomic import atomic_path
from malm.edge_index import hnsw_file
from malm.errors import BundleError, MalmError
from malm.manifest import SPACES, IndexSettings  # noqa: F401  (the manifest's `index` settings, re-exported)
from malm.vectors import EPS, l2_normalize

# Below this many allowed recipes a filtered query scans them exactly: hnswlib's filtered graph
# walk degrades (and can fail to find k) when most of the graph is filtered out.
EXACT_FILTER_MAX = 2048


class RWLock:
    """Many concurrent readers (searches) or one writer (add/remove/resize).

    hnswlib queries may run in parallel with each other, but not with `resize_index` or
    `mark_deleted`; a plain lock would serialize all searches.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:  # a writer may search its own index (re-entrant)
                while self._writer is not None:
                    self._cond.wait()
                self._readers += 1
                counted = True
            else:
                counted = False
        try:
            yield
        finally:
            if counted:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                while self._writer is not None or self._readers > 0:
                    self._cond.wait()
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Float32 rows scaled to unit L2 norm; a zero or non-finite row is refused."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise MalmError(f"embeddings must be a 2-D array [n, dim], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MalmError("embeddings contain NaN or infinite values")
    if (np.linalg.norm(x, axis=1) <= EPS).any():
        raise MalmError("embeddings contain an all-zero row (cannot be normalized)")
    return np.ascontiguousarray(l2_normalize(x))


def read_header_dim(path: Path) -> tuple[int, int, int]:
    """(dim, max_elements, element_count) from an hnswlib index file's header.

    hnswlib itself loads a file with any dim it is told, silently giving garbage: read the header
    (offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset, offsetData,
    all size_t) so a wrong dimension is caught.
    """
    with open(path, "rb") as f:
        head = f.read(48)
    if len(head) < 48:
        raise BundleError(f"index {path}: file is truncated ({len(head)} bytes)")
    _, max_elements, count, _, label_offset, offset_data = struct.unpack("<6Q", head)
    data_bytes = label_offset - offset_data
    if data_bytes <= 0 or data_bytes % 4:
        raise BundleError(f"index {path}: not an hnswlib index (bad header)")
    return data_bytes // 4, max_elements, count


class HnswIndex:
    """Thread-safe wrapper over one `hnswlib.Index` with the settings hnswlib forgets."""

    def __init__(self, index: hnswlib.Index, settings: IndexSettings, live: Collection[int] = ()) -> None:
        self._index = index
        self._settings = settings
        self._lock = RWLock()
        # Live labels: hnswlib's get_ids_list() still lists deleted ones.
        self._live: set[int] = set(int(x) for x in live)
        self._index.set_ef(settings.ef_search)

    # construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, settings: IndexSettings, capacity: int = 1024, seed: int = 100) -> HnswIndex:
        index = hnswlib.Index(space=settings.space, dim=settings.dim)
        capacity = max(int(capacity), 1)
        index.init_index(max_elements=capacity, M=settings.M, ef_construction=settings.ef_construction,
                         random_seed=seed, allow_replace_deleted=True)
        return cls(index, replace(settings, count=0, max_elements=capacity, next_label=0))

    @classmethod
    def load(cls, path: str | os.PathLike[str], settings: IndexSettings, live: Collection[int]) -> HnswIndex:
        """Load `path` with the manifest's settings; refuse a file that does not match them."""
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"index {path}: file not found")
        return cls.load_bytes(path.read_bytes(), str(path), settings, live)

    @classmethod
    def load_bytes(cls, data: bytes, where: str, settings: IndexSettings, live: Collection[int]) -> HnswIndex:
        """Load an index file's bytes (already read, and hashed, by the caller) after checking its structure
        (`hnsw_file.validate`: hnswlib would crash on a crafted file). hnswlib reads only from a path, so it
        gets a private in-memory copy (memfd) of exactly these bytes, never the file again."""
        live = set(int(x) for x in live)
        head = cls._check(data, where, settings, live)
        with _private_copy(data) as copy:
            return cls._load(copy, head, where, settings, live)

    @classmethod
    def load_file(cls, f: BinaryIO, where: str, settings: IndexSettings, live: Collection[int]) -> HnswIndex:
        """Load from an open file whose bytes the caller knows are the verified ones and stay so
        (`Bundle.open_stable`): checked, then read by hnswlib through the same open file (/proc/self/fd), so
        the checked copy is freed before hnswlib allocates its own (peak memory: one index)."""
        if not Path("/proc/self/fd").is_dir():
            return cls.load_bytes(f.read(), where, settings, live)
        live = set(int(x) for x in live)
        head = cls._check(f.read(), where, settings, live)  # the bytes are dropped when _check returns
        return cls._load(f"/proc/self/fd/{f.fileno()}", head, where, settings, live)

    @staticmethod
    def _check(data: bytes, where: str, settings: IndexSettings, live: set[int]) -> hnsw_file.IndexHeader:
        if len(live) != settings.count:
            raise BundleError(f"index {where}: manifest count {settings.count} but the store has {len(live)} recipes")
        head = hnsw_file.validate(data, where, settings.dim, settings.M, live)
        if head.ef_construction != settings.ef_construction:
            raise BundleError(f"index {where}: built with ef_construction={head.ef_construction}, manifest says "
                              f"{settings.ef_construction}")
        if settings.max_elements > head.max_elements:
            raise BundleError(f"index {where}: manifest 'index.max_elements' {settings.max_elements} is larger than "
                              f"the index file's capacity {head.max_elements}")
        return head

    @classmethod
    def _load(cls, source: str, head: hnsw_file.IndexHeader, where: str, settings: IndexSettings,
              live: set[int]) -> HnswIndex:
        index = hnswlib.Index(space=settings.space, dim=settings.dim)
        try:
            index.load_index(source, max_elements=head.max_elements, allow_replace_deleted=True)
        except (RuntimeError, MemoryError) as e:
            raise BundleError(f"index {where}: cannot be loaded ({e})") from None
        return cls(index, replace(settings, max_elements=index.max_elements), live)

    # properties ------------------------------------------------------------------------------
    @property
    def settings(self) -> IndexSettings:
        with self._lock.read():
            return replace(self._settings, count=len(self._live), max_elements=self._index.max_elements)

    @property
    def dim(self) -> int:
        return self._settings.dim

    def __len__(self) -> int:
        return len(self._live)

    def labels(self) -> set[int]:
        with self._lock.read():
            return set(self._live)

    def set_ef(self, ef: int) -> None:
        with self._lock.write():
            self._index.set_ef(ef)
            self._settings = replace(self._settings, ef_search=ef)

    # mutation ------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray) -> list[int]:
        """Add normalized vectors under fresh labels (reusing deleted slots); returns the labels."""
        x = normalize_rows(vectors)
        if x.shape[1] != self._settings.dim:
            raise MalmError(f"index: embeddings have dim {x.shape[1]}, index has dim {self._settings.dim}")
        if len(x) == 0:
            return []
        with self._lock.write():
            start = self._settings.next_label
            labels = np.arange(start, start + len(x), dtype=np.int64)
            # Slots freed by mark_deleted are recycled first; grow only for the rest.
            free = self._index.element_count - len(self._live)
            need = self._index.element_count + max(0, len(x) - free)
            if need > self._index.max_elements:
                self._index.resize_index(max(need, int(self._index.max_elements * 1.5) + 1))
            n_replace = min(free, len(x))
            if n_replace:
                self._index.add_items(x[:n_replace], labels[:n_replace], replace_deleted=True)
            if n_replace < len(x):
                self._index.add_items(x[n_replace:], labels[n_replace:])
            self._live.update(int(v) for v in labels)
            self._settings = replace(self._settings, next_label=start + len(x))
        return [int(v) for v in labels]

    def remove(self, labels: Sequence[int]) -> int:
        """Mark labels deleted (their slots are reused by later adds); returns how many were live."""
        removed = 0
        with self._lock.write():
            for label in labels:
                if int(label) in self._live:
                    self._index.mark_deleted(int(label))
                    self._live.discard(int(label))
                    removed += 1
        return removed

    def get_vectors(self, labels: Sequence[int]) -> np.ndarray:
        with self._lock.read():
            if not labels:
                return np.zeros((0, self._settings.dim), np.float32)
            return np.asarray(self._index.get_items(list(labels)), dtype=np.float32)

    # search ------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: Collection[int] = (),
               allow: Collection[int] | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (label, cosine) per query row, best first.

        `exclude` removes labels (e.g. recipes with an excluded ingredient); `allow` restricts to a set.
        A small allowed set is searched exactly; a large one through hnswlib's filter.
        """
        q = normalize_rows(queries)
        if q.shape[1] != self._settings.dim:
            raise MalmError(f"query has dim {q.shape[1]}, index has dim {self._settings.dim}")
        if k <= 0:
            raise MalmError(f"k must be > 0, got {k}")
        # k above ef_search needs ef raised for this query only, which other searches must not see.
        lock = self._lock.write() if k > self._settings.ef_search else self._lock.read()
        with lock:
            excluded = set(int(v) for v in exclude)
            if allow is None and not excluded:
                return self._graph_search(q, k, None, len(self._live))
            candidates = self._live if allow is None else self._live.intersection(int(v) for v in allow)
            if excluded:
                candidates = candidates - excluded
            n_allowed = len(candidates)
            if n_allowed == 0:
                return [[] for _ in range(len(q))]
            if n_allowed <= EXACT_FILTER_MAX:
                return self._exact_search(q, k, sorted(candidates))
            allowed = candidates
            return self._graph_search(q, k, lambda label: label in allowed, n_allowed)

    def _graph_search(self, q: np.ndarray, k: int, filt: Callable[[int], bool] | None,
                      n_allowed: int) -> list[list[tuple[int, float]]]:
        k_eff = min(k, n_allowed)
        if k_eff == 0:
            return [[] for _ in range(len(q))]
        try:
            if k_eff <= self._settings.ef_search:
                labels, dists = self._index.knn_query(q, k=k_eff, num_threads=1, filter=filt)
            else:
                # ef must be >= k; changing it is not safe while other threads search, so do it alone.
                labels, dists = self._query_with_ef(q, k_eff, filt)
        except RuntimeError:
            # hnswlib could not collect k results through the filtered graph: fall back to exact.
            allowed = [v for v in self._live if filt is None or filt(v)]
            return self._exact_search(q, k, sorted(allowed))
        sims = self._to_similarity(np.asarray(dists, dtype=np.float32))
        return [[(int(lab), float(s)) for lab, s in zip(row_l, row_s, strict=True)]
                for row_l, row_s in zip(labels, sims, strict=True)]

    def _query_with_ef(self, q: np.ndarray, k: int, filt: Callable[[int], bool] | None) -> tuple[Any, Any]:
        # Runs under the write lock (see search): no other thread queries while ef is raised.
        self._index.set_ef(k)
        try:
            return self._index.knn_query(q, k=k, num_threads=1, filter=filt)
        finally:
            self._index.set_ef(self._settings.ef_search)

    def _to_similarity(self, dists: np.ndarray) -> np.ndarray:
        # hnswlib returns distances: 1 - dot for ip/cosine, squared L2 (= 2 - 2 cos on unit vectors) for l2.
        if self._settings.space == "l2":
            return 1.0 - dists / 2.0
        return 1.0 - dists

    def _exact_search(self, q: np.ndarray, k: int, labels: list[int]) -> list[list[tuple[int, float]]]:
        vecs = np.asarray(self._index.get_items(labels), dtype=np.float32)
        sims = np.einsum("qd,nd->qn", q, vecs)  # not `@`: see rerank.late_interaction on small BLAS calls
        k_eff = min(k, len(labels))
        out: list[list[tuple[int, float]]] = []
        for row in sims:
            top = np.argpartition(-row, k_eff - 1)[:k_eff]
            top = top[np.lexsort((np.asarray(labels)[top], -row[top]))]
            out.append([(labels[int(i)], float(row[int(i)])) for i in top])
        return out

    # persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> IndexSettings:
        """Write atomically (temp + fsync + rename); returns the settings to record in the manifest."""
        with self._lock.read(), atomic_path(path) as tmp:
            self._index.save_index(str(tmp))
            return replace(self._settings, count=len(self._live), max_elements=self._index.max_elements)


@contextmanager
def _private_copy(data: bytes) -> Iterator[str]:
    """A path to a private copy of `data`: an anonymous memory file on Linux (nobody else can open or change
    it), else a file in a fresh 0700 temporary directory."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("malm-index", getattr(os, "MFD_CLOEXEC", 0))
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="malm-index-") as tmp:
        path = Path(tmp) / "index.hnsw"
        path.write_bytes(data)
        yield str(path)
