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
