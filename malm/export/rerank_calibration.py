"""Choose the re-ranking fusion weight on validation photos *through the bundle itself*, or switch it off.

    from malm.export.rerank_calibration import calibrate, record, validation_queries
    result = calibrate(Path("bundle"), validation_queries(Path("data")))
    record(Path("bundle"), result)        # manifest `rerank`: weight, enabled / disabled_reason, calibration

What is measured is what a user gets: `Retriever.load(bundle)` (the image encoder variant the self-check
chose on this machine, the bundle's HNSW index over all its recipes, its matching head or late interaction
on the bundle's recipe tokens). For each validation photo the SDK returns its global candidates with their
global and local scores (`Retriever.candidate_scores`); the fused order `(1 - w) * global + w * local` is
then exactly what `search(rerank=True)` returns with weight `w`. The weight with the best top-1 is kept
(ties: better top-5, then the smaller weight). Re-ranking stays on only when that top-1 gain is at least
`min_gain` points and top-5 drops by less than `min_gain` points (a change smaller than that is noise either
way); otherwise the bundle keeps the data but ships re-ranking off, with the measurement as the reason.
Never the test split: the benchmarks report on it.

Torch-free (the SDK and the stdlib Recipe1M reader), so `malm index build` can re-calibrate as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from malm.bundle import BundleWriter
from malm.edge_index.store import RecipeStore
from malm.errors import MalmError
from malm.export.report import summary_line, to_markdown
from malm.recipe1m import load_recipe1m
from malm.sdk import Retriever

__all__ = ["MAX_QUERIES", "MIN_GAIN", "WEIGHTS", "Query", "calibrate", "record", "summary_line", "validation_queries"]

WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MIN_GAIN = 0.5  # top-1 points on validation a weight must add for re-ranking to ship switched on
MAX_QUERIES = 500  # validation photos (a seeded sample when the split has more)
SPLIT = "val"


@dataclass(frozen=True)
class Query:
    photo: Path
    recipe_id: str


def validation_queries(data_dir: Path, split: str = SPLIT, limit: int = MAX_QUERIES, seed: int = 0) -> list[Query]:
    """One photo per `split` recipe that has one (a seeded sample of `limit` when there are more)."""
    found = [Query(Path(r.image_paths[0]), r.id) for r in load_recipe1m(data_dir).recipes
             if r.partition == split and r.image_paths]
    if len(found) > limit:
        keep = sorted(np.random.default_rng(seed).choice(len(found), limit, replace=False))
        found = [found[int(i)] for i in keep]
    return found


def _rates(ranked: Sequence[Sequence[str]], truth: Sequence[str]) -> tuple[float, float]:
    n = max(len(truth), 1)
    top1 = sum(1 for ids, t in zip(ranked, truth, strict=True) if ids[:1] == [t])
    top5 = sum(1 for ids, t in zip(ranked, truth, strict=True) if t in ids[:5])
    return round(100 * top1 / n, 2), round(100 * top5 / n, 2)


def calibrate(bundle: Path, queries: Sequence[Query], weights: Sequence[float] = WEIGHTS,
              min_gain: float = MIN_GAIN, threads: int | None = 1, split: str = SPLIT,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure re-ranking on `queries` through `bundle`; returns the manifest's `calibration` record with
    `weight`, `enabled` and (when off) `disabled_reason`."""
    say = log or (lambda _m: None)
    with Retriever.load(bundle, threads=threads) as r:
        manifest = r.bundle.sections
        if manifest.rerank is None:
            raise MalmError(f"bundle {bundle}: no re-ranking data to calibrate")
        tokens_from = "the distilled student's tokens" if manifest.student else "the trained image tower's own tokens"
        base: dict[str, Any] = {"split": split, "variant": r.backend.variant, "backend": r.backend.name,
                                "candidates": manifest.rerank.candidates, "scorer": manifest.rerank.kind,
                                "image_tokens": tokens_from, "min_gain_points": min_gain,
                                "weights_tried": list(weights)}
        if not r.backend.has_tokens:
            return {**base, "queries": 0, "weight": manifest.rerank.weight, "enabled": False,
                    "disabled_reason": f"the {r.backend.variant} image encoder has no 'tokens' output"}
        with RecipeStore.open(r.bundle.path(r.bundle.index.store)) as store:
            indexed = store.ids()  # a photo whose recipe is not indexed says nothing about re-ranking
        t0 = time.perf_counter()
        answers = r.candidate_scores([str(q.photo) for q in queries])
        seconds = time.perf_counter() - t0
    kept = [(q, a) for q, a in zip(queries, answers, strict=True) if not isinstance(a, MalmError)
            and q.recipe_id in indexed]
    unreadable = sum(isinstance(a, MalmError) for a in answers)
    base.update(queries=len(kept), unreadable=unreadable, not_indexed=len(queries) - unreadable - len(kept),
                seconds=round(seconds, 1))
    if not kept:
        why = (f"the recipes of the {len(queries)} {split} photos are not in the index" if base["not_indexed"]
               else f"no {split} photos to measure re-ranking on")
        return {**base, "weight": 0.0, "enabled": False,
                "disabled_reason": f"{why} (re-ranking cannot be shown to help)"}
    truth = [q.recipe_id for q, _ in kept]
    rows = {w: _rates([a.order(w) for _, a in kept], truth) for w in (0.0, *weights)}
    before = rows[0.0]
    best = max(weights, key=lambda w: (rows[w][0], rows[w][1], -w))
    after = rows[best]
    gain = round(after[0] - before[0], 2)
    result = {**base, "weight": best, "top1_before": before[0], "top1_after": after[0], "top5_before": before[1],
              "top5_after": after[1], "top1_gain_points": gain,
              "per_weight": {str(w): {"top1": v[0], "top5": v[1]} for w, v in rows.items()}}
    helps = gain >= min_gain and before[1] - after[1] < min_gain
    say(f"re-ranking on {len(kept)} {split} photos through the bundle ({r.backend.variant} encoder, {tokens_from}): "
        f"top-1 {before[0]}% -> {after[0]}%, top-5 {before[1]}% -> {after[1]}% at weight {best}"
        + ("" if helps else " -> shipped switched off"))
    if helps:
        return {**result, "enabled": True}
    return {**result, "enabled": False, "disabled_reason": (
        f"on {len(kept)} {split} photos through this bundle ({r.backend.variant} encoder, {tokens_from}), no fusion "
        f"weight raised top-1 by {min_gain} points or more without lowering top-5 as much (best: weight {best}, top-1 "
        f"{before[0]}% -> {after[0]}%, top-5 {before[1]}% -> {after[1]}%)")}


def record(bundle: Path, result: dict[str, Any]) -> None:
    """Write the calibration into the manifest's `rerank` section (weight, enabled, reason, the measurement)."""
    with BundleWriter(bundle) as bw:
        rerank = bw.sections().rerank
        if rerank is None:
            raise MalmError(f"bundle {bundle}: no re-ranking section to record the calibration in")
        measured = {k: v for k, v in result.items() if k not in ("enabled", "disabled_reason")}
        extra = {k: v for k, v in rerank.extra.items() if k != "disabled_reason"}
        extra["calibration"] = measured
        if not result["enabled"]:
            extra["disabled_reason"] = str(result["disabled_reason"])
        bw.set_rerank(replace(rerank, weight=float(result["weight"]), enabled=bool(result["enabled"]), extra=extra))
        # The export report (report.json / report.md) carries the same measurement.
        report = _read_report(bw.root / "report.json")
        if report is not None:
            report["rerank"] = result
            bw.write_json("report.json", report)
            bw.write_text("report.md", to_markdown(report))


def _read_report(path: Path) -> dict[str, Any] | None:
    import json

    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
