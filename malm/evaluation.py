"""The Recipe1M retrieval protocol: image→recipe and recipe→image medR and R@1/5/10 (numpy only).

Row i of `image_emb` and of `recipe_emb` are a pair. Within a subset of N pairs each query is ranked
against the N candidates of the other modality by cosine similarity; the rank of the true match is
1 + the number of candidates *strictly* more similar (ties go in the query's favour, as in H-T).
medR is the median rank, R@K the percentage of queries whose rank is ≤ K.

Two ways to draw the subsets of a size (1k and 10k by default):
  `ht`     10 random subsets per size (seeded), as H-T and earlier work do;
  `tfood`  disjoint bags of a random permutation, 10×1k and 5×10k as T-Food/MALM, as many as fit.
Reported: the mean over subsets, and its std (`<metric>_std`).

Memory: similarities are computed in blocks of rows in float32, so 10k×10k never materialises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from malm.errors import MalmError
from malm.recipe1m import PROTOCOLS  # re-exported: the protocols are scored here
from malm.vectors import l2_normalize

DEFAULT_SIZES = (1000, 10000)
METRICS = ("medR", "R@1", "R@5", "R@10")
HT_SUBSETS = 10
_BLOCK_ELEMENTS = 1 << 24  # 64 MB of float32 per similarity block


def size_key(size: int) -> str:
    """`1k`, `10k`, else the number as a string."""
    return {1000: "1k", 10000: "10k"}.get(size, str(size))


def tfood_bags(size: int) -> int:
    """The most disjoint bags T-Food draws for a size: 5 at 10k and above, else 10."""
    return 5 if size >= 10000 else 10


def ranks(queries: np.ndarray, candidates: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Rank (1-based) of candidate i for query i, for every i: 1 + #candidates strictly more similar.

    Both [N, D]; cosine similarity unless `normalized` says the rows already have unit norm.
    """
    q = queries if normalized else l2_normalize(queries)
    c = candidates if normalized else l2_normalize(candidates)
    q, c = np.asarray(q, np.float32), np.asarray(c, np.float32)
    n = len(q)
    out = np.empty(n, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = q[start:stop] @ c.T  # [b, N] float32
        # The true score is read from the same product, so identical vectors tie exactly.
        true = sims[np.arange(stop - start), np.arange(start, stop)]
        out[start:stop] = 1 + (sims > true[:, None]).sum(axis=1)
    return out


def metrics_from_ranks(r: np.ndarray) -> dict[str, float]:
    r = np.asarray(r)
    out = {"medR": float(np.median(r))}
    for k in (1, 5, 10):
        out[f"R@{k}"] = float(100.0 * np.mean(r <= k))
    return out


def _check(image_emb: np.ndarray, recipe_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image_emb, recipe_emb = np.asarray(image_emb), np.asarray(recipe_emb)
    if image_emb.ndim != 2 or recipe_emb.ndim != 2:
        raise MalmError(f"embeddings must be 2-D [N, D]; got image {image_emb.shape}, recipe {recipe_emb.shape}")
    if image_emb.shape != recipe_emb.shape:
        raise MalmError(f"image and recipe embeddings must pair row by row with the same width; "
                        f"got image {image_emb.shape}, recipe {recipe_emb.shape}")
    if len(image_emb) < 2:
        raise MalmError(f"need at least 2 pairs to rank, got {len(image_emb)}")
    if not (np.isfinite(image_emb).all() and np.isfinite(recipe_emb).all()):
        raise MalmError("embeddings contain NaN or infinite values")
    return l2_normalize(image_emb), l2_normalize(recipe_emb)


def _subsets(n: int, size: int, protocol: str, rng: np.random.Generator) -> list[np.ndarray]:
    if protocol == "ht":
        if size == n:  # every random subset is the whole set: one evaluation says it all
            return [np.arange(n)]
        return [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(HT_SUBSETS)]
    perm = rng.permutation(n)
    bags = max(1, min(tfood_bags(size), n // size))
    return [np.sort(perm[b * size : (b + 1) * size]) for b in range(bags)]


def retrieval_metrics(
    image_emb: np.ndarray,
    recipe_emb: np.ndarray,
    sizes: Sequence[int] | None = None,
    protocol: str = "ht",
    seed: int = 0,
) -> dict[str, Any]:
    """medR and R@1/5/10 (percent) both ways, per size, mean (and `_std`) over the protocol's subsets.

    `sizes=None` means 1k and 10k, each skipped with a note when the data holds fewer pairs (and, when
    neither fits, all N pairs as one set); an explicit size above N is refused.
    Returns `{"im2recipe": {"1k": {...}}, "recipe2im": {...}, "protocol", "seed", "n", "sizes", "notes"}`.
    """
    if protocol not in PROTOCOLS:
        raise MalmError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    img, rec = _check(image_emb, recipe_emb)
    n = len(img)
    notes: list[str] = []
    if sizes is None:
        chosen = [s for s in DEFAULT_SIZES if s <= n]
        for s in DEFAULT_SIZES:
            if s > n:
                notes.append(f"size {size_key(s)} skipped: only {n} pairs")
        if not chosen:
            chosen = [n]
            notes.append(f"fewer pairs than {size_key(DEFAULT_SIZES[0])}: evaluated on all {n} pairs")
    else:
        chosen = []
        for s in sizes:
            if isinstance(s, bool) or int(s) != s or s < 2:
                raise MalmError(f"size must be an integer >= 2, got {s!r}")
            if s > n:
                raise MalmError(f"size {s} is larger than the {n} pairs given; pick a size <= {n}")
            if int(s) not in chosen:
                chosen.append(int(s))

    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"im2recipe": {}, "recipe2im": {}}
    subsets_used: dict[str, int] = {}
    for size in chosen:
        subsets = _subsets(n, size, protocol, rng)
        per: dict[str, list[dict[str, float]]] = {"im2recipe": [], "recipe2im": []}
        for idx in subsets:
            im, rc = img[idx], rec[idx]
            per["im2recipe"].append(metrics_from_ranks(ranks(im, rc, normalized=True)))
            per["recipe2im"].append(metrics_from_ranks(ranks(rc, im, normalized=True)))
        key = size_key(size)
        subsets_used[key] = len(subsets)
        if protocol == "tfood" and len(subsets) < tfood_bags(size):
            notes.append(f"tfood {key}: {len(subsets)} disjoint bag(s) of {size} fit in {n} pairs "
                         f"(the protocol asks for {tfood_bags(size)})")
        elif protocol == "ht" and len(subsets) == 1:
            notes.append(f"ht {key}: the size is all {n} pairs, so every subset is the same; evaluated once")
        for direction, rows in per.items():
            entry: dict[str, Any] = {}
            for m in METRICS:
                vals = np.asarray([r[m] for r in rows])
                entry[m] = float(vals.mean())
                entry[f"{m}_std"] = float(vals.std())
            entry["subsets"] = len(subsets)
            result[direction][key] = entry
    result.update(protocol=protocol, seed=seed, n=n, sizes=chosen, subsets=subsets_used, notes=notes)
    return result


TABLE_HEADER = ("direction", "size", "subsets", *METRICS)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The cells of a `retrieval_metrics` result, one row per direction and size (mean ± std over subsets):
    the one layout `format_table` (plain text) and `malm eval` (a rich table) both print."""
    rows = []
    for direction in ("im2recipe", "recipe2im"):
        for key, entry in result.get(direction, {}).items():
            if not isinstance(entry, dict) or "medR" not in entry:
                continue
            cells = [direction, key, str(entry.get("subsets", ""))]
            for m in METRICS:
                std = entry.get(f"{m}_std")
                fmt = "{:.1f}" if m == "medR" else "{:.2f}"
                cells.append(fmt.format(entry[m]) + (f" ± {fmt.format(std)}" if std else ""))
            rows.append(cells)
    return rows


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a `retrieval_metrics` result, then its notes."""
    header = list(TABLE_HEADER)
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [f"protocol {result.get('protocol', '?')}, {result.get('n', '?')} pairs, seed {result.get('seed', '?')}",
           line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(out)
