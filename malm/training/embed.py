"""Embed a split of a Recipe1M-layout folder with a trained run (for `malm eval --checkpoint`, export checks).

    image_emb, recipe_emb, ids = embed_split("runs/ht-tiny", "data/bench", split="test")

Images get the eval transform (`config.preprocess()`); recipes are encoded with the run's vocabulary.
Rows are paired (image i shows recipe ids[i]); both arrays are float32 and L2-normalized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from malm.errors import MalmError


def embed_split(run_dir: str | Path, data_dir: str | Path, split: str = "test", tag: str = "best",
                device: str = "cpu", batch_size: int = 64, cache_dir: str | Path | None = None,
                num_workers: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from malm.training.checkpoint import load_model
    from malm.training.data import RecipeImageDataset, prepare
    from malm.training.train import embed_pairs

    loaded = load_model(run_dir, tag=tag, device=device)
    cfg = loaded.config
    prepared = prepare(data_dir, cache_dir=cache_dir, min_freq=cfg.data.min_freq, limits=cfg.data.limits())
    if prepared.vocab != loaded.vocab:
        raise MalmError(f"{data_dir}: its training split gives a different vocabulary than {run_dir}/vocab.json "
                        f"({len(prepared.vocab)} vs {len(loaded.vocab)} words); embed the data the run was trained on")
    dataset = RecipeImageDataset(prepared, split, cfg.preprocess(), train=False)
    if len(dataset) == 0:
        raise MalmError(f"{data_dir}: split {split!r} has no recipes with images")
    if cfg.model.recipe.sentence_features == "minilm":
        from malm.training.models.minilm import with_sentence_features

        dataset = with_sentence_features(dataset, prepared, split)
    with torch.inference_mode(False):
        img, rec, index = embed_pairs(loaded.model, dataset, torch.device(device), batch_size=batch_size,
                                      amp=cfg.train.amp, num_workers=num_workers)
    ids = prepared.split(split).ids
    return img.astype(np.float32), rec.astype(np.float32), [ids[int(i)] for i in index]
