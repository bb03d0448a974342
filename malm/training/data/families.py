"""Near-duplicate families of recipes, for hard-negative sampling that must not pick a true match.

The procedural benchmark (`malm data synth`) generates families of near-duplicate recipes (one dish, members
differing by an ingredient or two; `synth/recipes.py`), but writes no family to layer1.json: the family of each
recipe is recomputed here from `synth.json` (seed, count) with `generate_recipes`, which draws no photos
(~8 CPU s for 10k recipes, so it is cached beside the prepared data). Other data (Recipe1M) has no family
information: the sampler then excludes identical titles only (`losses/itm.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import write_text_atomic
from malm.training.synth.recipes import generate_recipes

CACHE_FILE = "synth_families.json"


def _synth_family_map(data_dir: Path, cache_dir: Path, log: Any) -> dict[str, int] | None:
    meta_path = data_dir / "synth.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        seed, recipes = int(meta["seed"]), int(meta["recipes"])
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    cache = cache_dir / CACHE_FILE
    key = {"seed": seed, "recipes": recipes, "version": meta.get("version")}
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            if stored.get("key") == key:
                return {str(k): int(v) for k, v in stored["families"].items()}
        except (OSError, ValueError, KeyError, AttributeError, json.JSONDecodeError):
            pass  # rebuilt below

    families = {spec.id: spec.family for spec in generate_recipes(recipes, seed)}
    try:
        write_text_atomic(cache, json.dumps({"key": key, "families": families}))
    except OSError as e:  # a read-only cache still trains; it just recomputes next time
        log(f"families: cannot cache {cache} ({e})")
    return families


def split_families(prepared: Any, split: str, log: Any = lambda _m: None) -> np.ndarray | None:
    """int64 [recipes of the split]: each recipe's family (-1 when unknown), or None when the data has no
    family information. A benchmark whose recipe ids the generator does not reproduce gets None (and a log
    line) rather than wrong families."""
    families = _synth_family_map(Path(prepared.data_dir), Path(prepared.cache_dir), log)
    if families is None:
        return None
    ids = prepared.split(split).ids
    out = np.array([families.get(i, -1) for i in ids], dtype=np.int64)
    if len(out) and (out < 0).mean() > 0.01:
        log(f"families: {int((out < 0).sum())} of {len(out)} {split} recipe ids are not from the generator "
            "synth.json names; sampling excludes identical titles only")
        return None
    return out
