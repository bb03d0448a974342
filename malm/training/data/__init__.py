"""Recipe1M data: the reader (`recipe1m`), the prepared cache (`prepare`) and torch datasets (`dataset`).

    from malm.training.data import prepare, RecipeImageDataset
    prepared = prepare("data/recipe1m")            # parsed once, memory-mapped afterwards
    train = RecipeImageDataset(prepared, "train", config.preprocess(), train=True)

The datasets import torch; they load lazily so the reader and the cache stay torch-free.
"""

from __future__ import annotations

from typing import Any

from malm.recipe1m import SPLITS, ReadStats, Recipe, Recipe1M, iter_recipe1m, load_recipe1m
from malm.training.data.prepare import (
    DEFAULT_MIN_FREQ,
    PreparedData,
    SplitData,
    default_cache_dir,
    open_prepared,
    prepare,
)

__all__ = [
    "DEFAULT_MIN_FREQ", "SPLITS", "PreparedData", "ReadStats", "Recipe", "Recipe1M", "RecipeImageDataset",
    "RecipeTextDataset", "SplitData", "default_cache_dir", "iter_recipe1m", "load_recipe1m", "open_prepared",
    "prepare",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in ("RecipeImageDataset", "RecipeTextDataset", "load_image", "train_transform"):
        # on use only: loads torch
        from malm.training.data import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
