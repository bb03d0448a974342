"""The ingredient oracle: how well a perfect ingredient recogniser would retrieve recipes on a procedural benchmark.

    oracle = IngredientOracle.load(data_dir)                 # needs OUT/drawn_ingredients.json
    result = oracle.evaluate("test", size=1000, seed=0)      # the H-T 1k protocol of `malm evaluate`

The renderer logs which ingredients it drew on each photo (`writer.DRAWN_LOG`). The oracle ranks the recipes
of a subset for a photo by the visible ingredients alone: the IDF-weighted Jaccard overlap between the
photo's drawn ingredients and the recipe's ingredient names (det_ingrs, valid lines only) restricted to the
ingredients the renderer ever draws (salt or oil in a recipe say nothing about its photo). Nothing else is
used: no amounts (family members that differ only in a quantity tie), no title, no container.

Near-duplicate recipes tie, so the tie rule decides the number; all three are reported:
  `expected`     ties broken uniformly at random, in expectation (R@K = P(rank <= K); medR of the mid-rank):
                 the headline ceiling;
  `pessimistic`  the true recipe after every tied one (a floor);
  `optimistic`   before them, the convention `malm evaluate` uses for a model's cosine ties.
The pairs and subsets are `malm evaluate`'s: the split's recipes with a photo in layer1 order, each with its
first photo; `ht` draws 10 seeded subsets of `size` (one when size is every pair).
Torch-free (numpy only).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malm.errors import MalmError
from malm.evaluation import HT_SUBSETS, METRICS, _subsets, metrics_from_ranks
from malm.training.synth.writer import DRAWN_LOG, DRAWN_LOG_VERSION

TIE_RULES = ("expected", "pessimistic", "optimistic")


@dataclass(frozen=True)
class Pair:
    """One evaluation pair: a recipe with a photo, and that photo's drawn ingredients."""

    recipe_id: str
    photo: str
    drawn: frozenset[str]
    ingredients: frozenset[str]  # the recipe's valid det_ingrs names


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MalmError(f"{path}: not found") from None
    except (OSError, ValueError) as e:
        raise MalmError(f"{path}: cannot read JSON ({e})") from None


def load_drawn_log(data_dir: Path) -> dict[str, frozenset[str]]:
    """Photo file name -> ingredients drawn on it, from OUT/drawn_ingredients.json."""
    path = Path(data_dir) / DRAWN_LOG
    if not path.exists():
        raise MalmError(f"{path}: no drawn-ingredients log; this benchmark predates it: write it with "
                        f"`python benchmarks/oracle.py {data_dir} --write-log` (redraws the photos in memory)")
    log = _read_json(path)
    if not isinstance(log, dict) or log.get("version") != DRAWN_LOG_VERSION or not isinstance(log.get("photos"), dict):
        raise MalmError(f"{path}: not a version-{DRAWN_LOG_VERSION} drawn-ingredients log")
    return {str(k): frozenset(map(str, v)) for k, v in log["photos"].items()}


def split_pairs(data_dir: Path, split: str, drawn: dict[str, frozenset[str]]) -> list[Pair]:
    """The split's (recipe, first photo) pairs in layer1 order, as `malm evaluate` pairs them."""
    data_dir = Path(data_dir)
    layer1 = _read_json(data_dir / "layer1.json")
    photos = {r["id"]: [im["id"] for im in r.get("images", [])] for r in _read_json(data_dir / "layer2.json")}
    det = {r["id"]: r for r in _read_json(data_dir / "det_ingrs.json")}
    pairs = []
    for r in layer1:
        if r.get("partition") != split or not photos.get(r["id"]):
            continue
        photo = photos[r["id"]][0]
        if photo not in drawn:
            raise MalmError(f"{data_dir / DRAWN_LOG}: photo {photo} of recipe {r['id']} is not in the log "
                            f"(the log covers {split!r}? rewrite it with --write-log)")
        d = det.get(r["id"], {"ingredients": [], "valid": []})
        names = frozenset(i["text"] for i, ok in zip(d["ingredients"], d["valid"], strict=False) if ok)
        pairs.append(Pair(r["id"], photo, drawn[photo], names))
    if not pairs:
        raise MalmError(f"{data_dir}: no {split!r} recipe with a photo")
    return pairs


def idf_weights(pairs: list[Pair], drawable: frozenset[str]) -> dict[str, float]:
    """log(N / df) of each drawable ingredient over the pairs' recipes (df >= 1)."""
    df = Counter(n for p in pairs for n in p.ingredients & drawable)
    return {n: math.log(len(pairs) / c) + 1e-6 for n, c in df.items()}  # epsilon: an ingredient in all still counts


def score_matrix(pairs: list[Pair], drawable: frozenset[str], idf: dict[str, float]) -> np.ndarray:
    """[N, N] IDF-weighted Jaccard of photo i's drawn ingredients and recipe j's drawable ingredients."""
    vocab = sorted(drawable)
    col = {n: k for k, n in enumerate(vocab)}
    w = np.array([idf.get(n, 1e-6) for n in vocab])
    photos = np.zeros((len(pairs), len(vocab)))
    recipes = np.zeros((len(pairs), len(vocab)))
    for i, p in enumerate(pairs):
        photos[i, [col[n] for n in p.drawn if n in col]] = 1.0
        recipes[i, [col[n] for n in p.ingredients if n in col]] = 1.0
    inter = (photos * w) @ recipes.T
    union = (photos * w).sum(1)[:, None] + (recipes * w).sum(1)[None, :] - inter
    scores = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return np.round(scores, 9)  # float noise must not break exact ties


def rank_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query i (true candidate i): candidates scored strictly higher, and others tied with the true one."""
    true = np.diag(scores)[:, None]
    greater = (scores > true).sum(1)
    tied = (scores == true).sum(1) - 1
    return greater, tied


def metrics_with_ties(greater: np.ndarray, tied: np.ndarray, rule: str) -> dict[str, float]:
    """medR and R@1/5/10 (percent) under a tie rule (see the module docstring)."""
    if rule == "optimistic":
        return metrics_from_ranks(greater + 1)
    if rule == "pessimistic":
        return metrics_from_ranks(greater + 1 + tied)
    if rule != "expected":
        raise MalmError(f"unknown tie rule {rule!r}; one of {', '.join(TIE_RULES)}")
    # the rank is uniform on greater+1 .. greater+1+tied
    out = {"medR": float(np.median(greater + 1 + tied / 2))}
    for k in (1, 5, 10):
        out[f"R@{k}"] = float(100.0 * np.mean(np.clip((k - greater) / (tied + 1), 0.0, 1.0)))
    return out


@dataclass(frozen=True)
class IngredientOracle:
    data_dir: Path
    drawn: dict[str, frozenset[str]]

    @classmethod
    def load(cls, data_dir: str | Path) -> IngredientOracle:
        return cls(Path(data_dir), load_drawn_log(Path(data_dir)))

    def evaluate(self, split: str = "test", size: int | None = 1000, seed: int = 0, protocol: str = "ht") -> dict[str, Any]:
        """image→recipe metrics of the oracle, mean over the protocol's subsets, per tie rule.

        `size` None (or above the split's pairs): all pairs as one set, as `malm evaluate` does for small splits.
        """
        pairs = split_pairs(self.data_dir, split, self.drawn)
        n = len(pairs)
        size = n if size is None or size > n else size
        drawable = frozenset().union(*self.drawn.values())
        scores = score_matrix(pairs, drawable, idf_weights(pairs, drawable))
        per: dict[str, list[dict[str, float]]] = {rule: [] for rule in TIE_RULES}
        subsets = _subsets(n, size, protocol, np.random.default_rng(seed))
        for idx in subsets:
            greater, tied = rank_stats(scores[np.ix_(idx, idx)])
            for rule in TIE_RULES:
                per[rule].append(metrics_with_ties(greater, tied, rule))
        out: dict[str, Any] = {"split": split, "pairs": n, "size": size, "protocol": protocol, "seed": seed,
                               "subsets": len(subsets), "max_subsets": HT_SUBSETS}
        for rule, rows in per.items():
            out[rule] = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
        # how ambiguous the split is: photos whose drawn set matches another recipe's exactly as well as its own
        greater, tied = rank_stats(scores)
        out["photos_tied_with_another_recipe_share"] = float(np.mean(tied > 0))
        out["photos_not_top_share"] = float(np.mean(greater > 0))
        return out


def fraction_of_ceiling(r1: float, ceiling_r1: float) -> float:
    """A model's R@1 as a fraction of the oracle's (0 when the ceiling is 0)."""
    return r1 / ceiling_r1 if ceiling_r1 > 0 else 0.0
