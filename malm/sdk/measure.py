"""Measure a bundle on labelled photos: recall@k, median rank and per-photo latency, as the device sees them.

    from malm.sdk.measure import measure
    report = measure(retriever, photos, true_ids, k=10, rerank=False)

Used to decide whether re-ranking earns its cost (R@1 with and without it) and by `malm demo`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from malm.edge_index.rerank import calibration
from malm.errors import MalmError
from malm.sdk.image_io import ImageInput
from malm.sdk.retriever import Retriever


@dataclass(frozen=True)
class Measurement:
    n: int  # photos answered
    failed: int  # photos that could not be read
    recall: dict[str, float]  # {"R@1": %, "R@5": %, "R@10": %} of photos whose recipe is in the top k
    medr: float  # median rank of the true recipe (k + 1 when it is not in the top k)
    latency_ms_p50: float  # one photo, end to end: decode, preprocess, encode, search (+ re-rank), store
    latency_ms_p90: float
    rerank: bool
    k: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(retriever: Retriever, photos: Sequence[ImageInput], true_ids: Sequence[str], k: int = 10,
            rerank: bool = False, exclude_ingredients: Sequence[str] = ()) -> Measurement:
    """Query each photo alone (the latency an app sees) and score where its true recipe lands."""
    if len(photos) != len(true_ids) or not photos:
        raise MalmError("measure: need as many true recipe ids as photos (and at least one)")
    ranks: list[int] = []
    times: list[float] = []
    failed = 0
    for image, truth in zip(photos, true_ids, strict=True):
        start = time.perf_counter()
        result = retriever.search_batch([image], k=k, rerank=rerank, exclude_ingredients=exclude_ingredients)[0]
        times.append((time.perf_counter() - start) * 1e3)
        if isinstance(result, MalmError):
            failed += 1
            continue
        ids = [h.recipe_id for h in result]
        ranks.append(ids.index(truth) + 1 if truth in ids else k + 1)
    r = np.asarray(ranks) if ranks else np.asarray([k + 1])
    recall = {f"R@{c}": round(float((r <= c).mean() * 100), 2) for c in (1, 5, 10) if c <= k}
    return Measurement(n=len(ranks), failed=failed, recall=recall, medr=float(np.median(r)),
                       latency_ms_p50=round(float(np.percentile(times, 50)), 3),
                       latency_ms_p90=round(float(np.percentile(times, 90)), 3), rerank=rerank, k=k)


def _rates(ranks: Sequence[int | None]) -> dict[str, float]:
    n = max(len(ranks), 1)
    return {"top1_percent": round(100 * sum(r == 1 for r in ranks) / n, 2),
            "top5_percent": round(100 * sum(r is not None and r <= 5 for r in ranks) / n, 2)}


def rerank_comparison(retriever: Retriever, photos: Sequence[ImageInput], true_ids: Sequence[str],
                      k: int = 5) -> dict[str, Any]:
    """Every photo searched as a user would, without and with `rerank=True` (alternating, so both meet the
    same machine load): top-1/top-5 of each, the milliseconds re-ranking adds per query, and the weight.

    On a bundle whose re-ranking is off (its export measured no gain) `search(rerank=True)` is refused; the
    re-ranked order is then computed from the SDK's own candidate scores with the bundle's weight (what it
    would have returned) and no latency is given."""
    if len(photos) != len(true_ids) or not photos:
        raise MalmError("rerank_comparison: need as many true recipe ids as photos (and at least one)")
    snap_rr = retriever.bundle.sections.rerank
    out: dict[str, Any] = {"photos": len(photos), "k": k, "recipes": len(retriever),
                           "variant": retriever.backend.variant, "backend": retriever.backend.name,
                           "weight": snap_rr.weight if snap_rr else None,
                           "enabled": bool(snap_rr and snap_rr.enabled), "note": retriever.rerank_note,
                           "calibration": calibration(snap_rr) if snap_rr else None}
    ranks: dict[str, list[int | None]] = {"global": [], "reranked": []}
    ms: dict[str, list[float]] = {"global": [], "reranked": []}
    # CPU time of this thread too: with 1 intra-op thread ONNX Runtime runs on the caller's thread, so it is
    # the cost itself, unlike wall time, which a shared machine's preemptions inflate.
    cpu_ms: dict[str, list[float]] = {"global": [], "reranked": []}
    live = retriever.can_rerank
    modes = ("global", "reranked") if live else ("global",)
    for image in photos[:2]:  # warm-up (first runs of each session), not counted
        for mode in modes:
            retriever.search_batch([image], k=k, rerank=mode == "reranked")
    for image, truth in zip(photos, true_ids, strict=True):
        for mode in modes:
            start, cpu0 = time.perf_counter(), time.thread_time()
            result = retriever.search_batch([image], k=k, rerank=mode == "reranked")[0]
            ms[mode].append((time.perf_counter() - start) * 1e3)
            cpu_ms[mode].append((time.thread_time() - cpu0) * 1e3)
            ids = [] if isinstance(result, MalmError) else [h.recipe_id for h in result]
            ranks[mode].append(ids.index(truth) + 1 if truth in ids else None)
    if not live and snap_rr is not None:
        # Off in this bundle: the order it would give, from the same SDK scores (no latency: not served).
        for cand, truth in zip(retriever.candidate_scores(photos), true_ids, strict=True):
            ids = [] if isinstance(cand, MalmError) else cand.order(snap_rr.weight)[:k]
            ranks["reranked"].append(ids.index(truth) + 1 if truth in ids else None)
    out["global"] = {**_rates(ranks["global"]), "ms_p50": _p50(ms["global"]), "ms_mean": _mean(ms["global"]),
                     "cpu_ms_p50": _p50(cpu_ms["global"])}
    if ranks["reranked"]:
        out["reranked"] = {**_rates(ranks["reranked"]), "ms_p50": _p50(ms["reranked"]),
                           "ms_mean": _mean(ms["reranked"]), "cpu_ms_p50": _p50(cpu_ms["reranked"])}
        out["top1_gain_points"] = round(out["reranked"]["top1_percent"] - out["global"]["top1_percent"], 2)
        out["top5_gain_points"] = round(out["reranked"]["top5_percent"] - out["global"]["top5_percent"], 2)
        if live:
            added = [b - a for a, b in zip(ms["global"], ms["reranked"], strict=True)]
            out["added_ms_p50"] = _p50(added)
            out["added_ms_mean"] = _mean(added)
            out["added_cpu_ms_p50"] = _p50([b - a for a, b in zip(cpu_ms["global"], cpu_ms["reranked"],
                                                                   strict=True)])
    return out


def _p50(xs: Sequence[float]) -> float | None:
    return round(float(np.percentile(xs, 50)), 3) if xs else None


def _mean(xs: Sequence[float]) -> float | None:
    return round(float(np.mean(xs)), 3) if xs else None
