"""Index at scale: build time, bytes per recipe, QPS and recall@10 against exact search.

Every library indexes the same vectors and answers the same queries, with the same graph settings
(malm's `IndexSettings` defaults: M, ef_construction, ef_search), so the columns compare libraries, not
tunings. The vectors are synthetic: a clustered, anisotropic mixture on the unit sphere that mimics
real embeddings (a shared mean direction, ~1000 food-class-like clusters of Zipf-distributed sizes, a
low intrinsic dimension with a decaying spectrum, a little isotropic noise); queries are fresh draws
from the same mixture. Exact search is numpy matmul over the float32 matrix.

QPS is measured two ways: one query at a time on one thread (a device answering one photo: the
target's definition) and the whole query batch on all threads (a server).
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.context import Context
from benchmarks.suite.timing import thread_limit

K = 10


# ----------------------------------------------------------------------------------------------- data


def clustered_vectors(n: int, dim: int, seed: int, n_clusters: int = 1024, intrinsic: int = 128,
                      chunk: int = 65_536) -> np.ndarray:
    """`n` unit vectors [n, dim] float32 drawn from the embedding-like mixture described above.

    The mixture's parameters (centres, basis) depend only on `dim` and a fixed seed, so databases and
    queries drawn with different `seed`s come from the same distribution.
    """
    base = np.random.default_rng(12345 + dim)
    r = min(intrinsic, dim)
    # Orthonormal basis of the low-dimensional subspace where most variance lives.
    basis, _ = np.linalg.qr(base.standard_normal((dim, r)))
    basis = basis.T.astype(np.float32)  # [r, dim]
    spectrum = (1.0 / np.sqrt(np.arange(1, r + 1))).astype(np.float32)  # decaying variance per direction
    mean = base.standard_normal(r).astype(np.float32)
    mean *= 1.2 / np.linalg.norm(mean)
    centres = (base.standard_normal((n_clusters, r)).astype(np.float32) * spectrum) * 0.9 + mean
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.7  # a few big classes, a long tail
    probs = sizes / sizes.sum()

    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.choice(n_clusters, size=m, p=probs)
        z = centres[which] + rng.standard_normal((m, r), dtype=np.float32) * spectrum * 0.45
        x = z @ basis + rng.standard_normal((m, dim), dtype=np.float32) * (0.25 / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


def distribution_stats(x: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Cosine statistics that characterise the vectors (so a reader can compare to real embeddings)."""
    rng = np.random.default_rng(seed)
    a = x[rng.choice(len(x), size=min(2000, len(x)), replace=False)]
    sims = a @ a.T
    off = sims[~np.eye(len(a), dtype=bool)]
    np.fill_diagonal(sims, -1)
    return {"mean_pair_cosine": float(off.mean()), "p99_pair_cosine": float(np.percentile(off, 99)),
            "mean_nn_cosine_in_sample": float(sims.max(axis=1).mean())}


def exact_topk(db: np.ndarray, queries: np.ndarray, k: int = K, block: int = 131_072) -> np.ndarray:
    """Ground-truth top-k ids per query by float32 matmul, streamed over database blocks."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(db), block):
        s = queries @ db[start:start + block].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    hits = sum(len(set(map(int, f[:k])) & set(map(int, t[:k]))) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


# ------------------------------------------------------------------------------------------ libraries


@dataclass(frozen=True)
class Graph:
    M: int
    ef_construction: int
    ef_search: int


class Backend:
    """One index library behind build / search-one / search-batch / size."""

    name = ""
    note = ""

    def build(self, x: np.ndarray, threads: int) -> None:
        raise NotImplementedError

    def search_one(self, q: np.ndarray) -> np.ndarray:
        """Ids of the top-K for one query [dim], on one thread."""
        raise NotImplementedError

    def search_batch(self, q: np.ndarray, threads: int) -> np.ndarray:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        pass

    def file_bytes(self, scratch: Path) -> int:
        """Bytes of the index as saved (what a device loads into memory)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Exact(Backend):
    name = "exact (numpy matmul)"
    note = "float32 matrix, brute force"

    def build(self, x: np.ndarray, threads: int) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)

    def search_one(self, q: np.ndarray) -> np.ndarray:
        s = self.x @ q
        top = np.argpartition(-s, K - 1)[:K]
        return top[np.argsort(-s[top])]

    def search_batch(self, q: np.ndarray, threads: int) -> np.ndarray:
        with thread_limit(threads):
            return exact_topk(self.x, q)

    def file_bytes(self, scratch: Path) -> int:
        return int(self.x.nbytes)

    def close(self) -> None:
        del self.x


class MalmHnsw(Backend):
    """malm's own index (`malm.edge_index.hnsw.HnswIndex`: hnswlib plus its settings and locking)."""

    name = "hnswlib (malm.edge_index)"
    batch_threads = 1  # HnswIndex.search is single-threaded by design

    def __init__(self, graph: Graph) -> None:
        from malm.edge_index.hnsw import HnswIndex, IndexSettings

        self.graph = graph
        self._settings = IndexSettings(dim=1, M=graph.M, ef_construction=graph.ef_construction,
                                       ef_search=graph.ef_search)
        self._cls = HnswIndex
        suffix = "" if graph.M == default_graph()[0].M else f", M={graph.M}"
        self.name = f"hnswlib (malm.edge_index{suffix})"
        self.note = f"M={graph.M} ef_construction={graph.ef_construction} ef_search={graph.ef_search}"

    def build(self, x: np.ndarray, threads: int) -> None:
        from dataclasses import replace

        # HnswIndex.add inserts on hnswlib's default thread count (all cores): recorded as such.
        self.index = self._cls.create(replace(self._settings, dim=x.shape[1]), capacity=len(x))
        self.index.add(x)

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return np.fromiter((label for label, _ in self.index.search(q[None, :], K)[0]), dtype=np.int64)

    def search_batch(self, q: np.ndarray, threads: int) -> np.ndarray:
        # The public call, as users get it: HnswIndex.search walks on one thread (safe with filters).
        rows = self.index.search(q, K)
        return np.asarray([[label for label, _ in row] for row in rows], dtype=np.int64)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def file_bytes(self, scratch: Path) -> int:
        path = scratch / "bench_index.hnsw"
        try:
            self.index.save(path)
            return path.stat().st_size
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        del self.index


class FaissHnsw(Backend):
    name = "faiss-cpu HNSWFlat"

    def __init__(self, graph: Graph) -> None:
        import faiss

        self.faiss = faiss
        self.graph = graph
        self.note = f"faiss {faiss.__version__}, M={graph.M} efConstruction={graph.ef_construction} efSearch={graph.ef_search}"

    def build(self, x: np.ndarray, threads: int) -> None:
        faiss = self.faiss
        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexHNSWFlat(x.shape[1], self.graph.M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.graph.ef_construction
        self.index.add(x)
        self.index.hnsw.efSearch = self.graph.ef_search

    def search_one(self, q: np.ndarray) -> np.ndarray:
        self.faiss.omp_set_num_threads(1)
        _, ids = self.index.search(q[None, :], K)
        return ids[0]

    def search_batch(self, q: np.ndarray, threads: int) -> np.ndarray:
        self.faiss.omp_set_num_threads(threads)
        _, ids = self.index.search(q, K)
        return ids

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def file_bytes(self, scratch: Path) -> int:
        return int(self.faiss.serialize_index(self.index).nbytes)

    def close(self) -> None:
        del self.index


class USearch(Backend):
    name = "usearch HNSW"

    def __init__(self, graph: Graph) -> None:
        import usearch
        from usearch.index import Index

        self._index_cls = Index
        self.graph = graph
        self.note = f"usearch {usearch.__version__} f32, connectivity={graph.M} expansion_add={graph.ef_construction} expansion_search={graph.ef_search}"

    def build(self, x: np.ndarray, threads: int) -> None:
        self.index = self._index_cls(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=self.graph.M,
                                     expansion_add=self.graph.ef_construction,
                                     expansion_search=self.graph.ef_search)
        self.index.add(np.arange(len(x), dtype=np.uint64), x, threads=threads)

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.search(q, K, threads=1).keys, dtype=np.int64)

    def search_batch(self, q: np.ndarray, threads: int) -> np.ndarray:
        return np.asarray(self.index.search(q, K, threads=threads).keys, dtype=np.int64)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def file_bytes(self, scratch: Path) -> int:
        return int(self.index.serialized_length)

    def close(self) -> None:
        del self.index


def default_graph() -> tuple[Graph, str]:
    """malm's defaults, so the peers run the settings our users get."""
    try:
        from malm.edge_index.hnsw import IndexSettings
    except ImportError as e:
        return Graph(M=32, ef_construction=200, ef_search=128), f"malm.edge_index not importable ({e}): M=32/200/128"
    s = IndexSettings(dim=1)
    return Graph(M=s.M, ef_construction=s.ef_construction, ef_search=s.ef_search), "malm IndexSettings defaults"


def backends(graph: Graph) -> list[tuple[str, Callable[[], Backend] | None, str]]:
    """(name, factory or None, reason when None) in report order; a missing peer is skipped with why."""
    out: list[tuple[str, Callable[[], Backend] | None, str]] = [("exact", Exact, "")]
    try:
        import malm.edge_index.hnsw  # noqa: F401

        out.append(("hnswlib", lambda: MalmHnsw(graph), ""))
    except ImportError as e:
        out.append(("hnswlib", None, f"malm.edge_index not importable: {e}"))
    try:
        import faiss  # noqa: F401

        out.append(("faiss", lambda: FaissHnsw(graph), ""))
    except ImportError:
        out.append(("faiss", None, "faiss-cpu not installed (pip install 'malm[bench]')"))
    try:
        import usearch.index  # noqa: F401

        out.append(("usearch", lambda: USearch(graph), ""))
    except ImportError:
        out.append(("usearch", None, "usearch not installed (pip install 'malm[bench]')"))
    return out


# -------------------------------------------------------------------------------------------- measure


def _qps_one(backend: Backend, queries: np.ndarray, max_s: float) -> tuple[float, list[np.ndarray], dict[str, float]]:
    """Sequential single-query search: QPS, results, and p50/p95 latency (ms)."""
    found: list[np.ndarray] = []
    lat: list[float] = []
    t_end = time.perf_counter() + max_s
    with thread_limit(1):  # numpy's BLAS would otherwise use every core for the exact scan
        for q in queries:
            t0 = time.perf_counter()
            found.append(backend.search_one(q))
            lat.append(time.perf_counter() - t0)
            if time.perf_counter() > t_end and len(lat) >= 5:
                break
    a = np.asarray(lat) * 1e3
    return len(lat) / float(np.sum(lat)), found, {"p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95))}


def _measure_backend(ctx: Context, backend: Backend, x: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                     threads: int, ef_sweep: tuple[int, ...], one_query_s: float,
                     truth_s: float | None = None) -> dict[str, Any]:
    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    backend.build(x, threads)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_delta = max(_rss_bytes() - rss0, 0)
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        file_bytes = backend.file_bytes(Path(tmp))
    n, dim = x.shape
    res: dict[str, Any] = {
        "library": backend.name, "settings": backend.note, "build_s": round(build_s, 3),
        "build_threads": threads, "inserts_per_s": round(n / max(build_s, 1e-9), 1),
        # RSS growth is only indicative: the allocator reuses memory freed by the previous library.
        "bytes_per_recipe": round(file_bytes / n, 1), "rss_bytes_per_recipe": round(rss_delta / n, 1),
        "bytes_per_recipe_budget": 4 * dim + 200,
    }
    qps1, found1, lat = _qps_one(backend, queries, one_query_s)
    res["qps_1query_1thread"] = round(qps1, 1)
    res["latency_1query_ms"] = {k: round(v, 4) for k, v in lat.items()}
    res["queries_timed_1query"] = len(found1)
    res["recall@10"] = round(recall_at_k(np.asarray(found1), truth[:len(found1)]), 4)
    if isinstance(backend, Exact) and truth_s is not None:
        batch, batch_s = truth, truth_s  # the ground truth *is* exact batch search: timed once, not twice
    else:
        t0 = time.perf_counter()
        batch = backend.search_batch(queries, threads)
        batch_s = time.perf_counter() - t0
    res["qps_batch"] = round(len(queries) / batch_s, 1)
    res["batch_threads"] = getattr(backend, "batch_threads", threads)
    res["recall@10_batch"] = round(recall_at_k(batch, truth), 4)
    sweep = []
    for ef in ef_sweep:
        backend.set_ef(ef)
        qps, found, lat = _qps_one(backend, queries, one_query_s)
        sweep.append({"ef_search": ef, "recall@10": round(recall_at_k(np.asarray(found), truth[:len(found)]), 4),
                      "qps_1query_1thread": round(qps, 1), "p50_ms": round(lat["p50_ms"], 4)})
    if sweep:
        res["ef_sweep"] = sweep
    return res


def run(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    dim = opts.index_dim or _model_dim(ctx)
    graph, graph_src = default_graph()
    threads = max(opts.threads)
    n_queries = 100 if opts.quick else 1000
    ef_sweep = () if opts.quick else (32, 64, 256)
    one_query_s = 0.5 if opts.quick else 5.0
    out: dict[str, Any] = {
        "dim": dim, "k": K, "queries": n_queries, "graph": graph.__dict__, "graph_source": graph_src,
        "vectors": ("synthetic clustered unit vectors mimicking real embeddings (shared mean direction, 1024 "
                    "Zipf-sized clusters, 128-d decaying spectrum + isotropic noise); queries: fresh draws"),
        "qps_definition": "qps_1query_1thread: one query at a time on one thread (device); qps_batch: all "
                          f"queries in one call on {threads} threads (server)",
        "sizes": [],
    }
    queries = clustered_vectors(n_queries, dim, seed=opts.seed + 999_983)
    build_rate: dict[str, float] = {}  # inserts/s at the previous size, to skip builds that cannot fit
    for n in opts.index_sizes:
        ctx.log(f"index: {n:,} x {dim} clustered vectors")
        x = clustered_vectors(n, dim, seed=opts.seed + n)
        t0 = time.perf_counter()
        with thread_limit(threads):
            truth = exact_topk(x, queries)
        truth_s = time.perf_counter() - t0
        entry: dict[str, Any] = {"n": n, "ground_truth_s": round(truth_s, 3),
                                 "distribution": distribution_stats(x), "results": {}}
        todo = backends(graph)
        if not opts.quick and n <= 10_000 and graph.M > 16 and todo[1][1] is not None:
            # The memory/recall trade-off of a smaller graph, measured where it is cheap to build.
            small = Graph(M=16, ef_construction=graph.ef_construction, ef_search=graph.ef_search)
            todo.insert(2, ("hnswlib_M16", lambda small=small: MalmHnsw(small), ""))
        for key, factory, reason in todo:
            if factory is None:
                entry["results"][key] = {"skipped": reason}
                ctx.log(f"index: skip {key}: {reason}")
                continue
            if key in build_rate:
                # Insert rate falls slowly with n (log n hops): x1.5 margin on the linear estimate.
                est = 1.5 * n / build_rate[key] + 30
                # A build that would eat the time the rest of the run needs is skipped, said plainly.
                if est > ctx.remaining() and key != "hnswlib":
                    reason = (f"estimated build {est:.0f}s (from {build_rate[key]:.0f} inserts/s at the previous "
                              f"size) exceeds the remaining time budget {ctx.remaining():.0f}s")
                    entry["results"][key] = {"skipped": reason}
                    ctx.log(f"index: skip {key} at {n:,}: {reason}")
                    continue
            backend = factory()
            try:
                r = _measure_backend(ctx, backend, x, queries, truth, threads,
                                     ef_sweep if key == "hnswlib" else (), one_query_s, truth_s)
            finally:
                backend.close()
                gc.collect()
            build_rate[key] = r["inserts_per_s"]
            entry["results"][key] = r
            ctx.log(f"index: {key:8s} n={n:,} build {r['build_s']:.1f}s  recall@10 {r['recall@10']:.3f}  "
                    f"qps(1q) {r['qps_1query_1thread']:.0f}  {r['bytes_per_recipe']:.0f} B/recipe")
        exact_qps = entry["results"]["exact"].get("qps_1query_1thread")
        for r in entry["results"].values():
            if "qps_1query_1thread" in r and exact_qps:
                r["speedup_vs_exact_1query"] = round(r["qps_1query_1thread"] / exact_qps, 2)
                r["speedup_vs_exact_batch"] = round(r["qps_batch"] / entry["results"]["exact"]["qps_batch"], 2)
        out["sizes"].append(entry)
        _checkpoint(ctx, out)
        del x, truth
        gc.collect()
    (opts.out / PARTIAL).unlink(missing_ok=True)
    return out


PARTIAL = "bench-index-partial.json"


def _checkpoint(ctx: Context, out: dict[str, Any]) -> None:
    """The sizes done so far, so a run stopped during a long build (1M) keeps the smaller sizes' numbers."""
    import json

    from malm._atomic import write_text_atomic

    ctx.options.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.options.out / PARTIAL, json.dumps({"status": "partial", **out}, indent=2, default=str))


def _model_dim(ctx: Context) -> int:
    """The embedding dim of the bundle being measured, or of the full `malm` preset (what ships)."""
    opts = ctx.options
    if opts.quick or opts.bundle is not None:
        try:
            from malm.bundle import read_manifest

            return int(read_manifest(ctx.artifacts().bundle)["embedding"]["dim"])
        except Exception as e:  # the index section must not depend on the model build working
            ctx.log(f"index: bundle dim unavailable ({e}); using 64 for quick / 1024 otherwise")
            return 64 if opts.quick else 1024
    try:
        from malm.training.config import load_preset

        return int(load_preset("malm").model.embed_dim)
    except Exception:
        from malm.training.config import ModelConfig

        return int(ModelConfig().embed_dim)
