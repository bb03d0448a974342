"""Helpers for the trainer tests: a small Recipe1M-layout folder and a tiny config, all in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from malm.training.config import load_preset

WORDS = ["tomato", "pasta", "rice", "salt", "oil", "onion", "garlic", "basil", "cheese", "egg", "flour", "sugar"]


def make_dataset(root: Path, n_train: int = 24, n_val: int = 8, n_test: int = 8, seed: int = 0) -> Path:
    """Recipes of random words with one 24x24 JPEG each whose colour depends on the first ingredient."""
    rng = np.random.default_rng(seed)
    layer1, layer2 = [], []
    k = 0
    for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for _ in range(n):
            rid = f"{k:08x}"
            ingr = list(rng.choice(WORDS, size=int(rng.integers(2, 5)), replace=False))
            layer1.append({"id": rid, "partition": part, "url": "", "title": " ".join(rng.choice(WORDS, 2)),
                           "ingredients": [{"text": f"{int(rng.integers(1, 4))} cups {w}"} for w in ingr],
                           "instructions": [{"text": f"cook the {w} well ."} for w in ingr[: int(rng.integers(1, 3))]]})
            image_id = f"{rid}.jpg"
            layer2.append({"id": rid, "images": [{"id": image_id}]})
            path = root / "images" / part / image_id[0] / image_id[1] / image_id[2] / image_id[3] / image_id
            path.parent.mkdir(parents=True, exist_ok=True)
            base = np.array([WORDS.index(ingr[0]) * 20, 255 - WORDS.index(ingr[0]) * 20, 128], np.float64)
            pixels = np.clip(base + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, format="JPEG")
            k += 1
    (root / "layer1.json").write_text(json.dumps(layer1))
    (root / "layer2.json").write_text(json.dumps(layer2))
    return root


def tiny_config(path: Path, **train: object) -> Path:
    """ht-tiny shrunk to run in seconds; written as a .json to pass as --preset."""
    overrides = {
        "name": "test-tiny",
        "model.image.image_size": 32, "model.image.patch_size": 8, "model.image.width": 32, "model.image.depth": 1,
        "model.image.heads": 2, "model.image.mlp_ratio": 2.0, "model.recipe.width": 32, "model.recipe.heads": 2,
        "model.embed_dim": 16, "data.min_freq": 1, "train.epochs": 2, "train.batch_size": 8, "train.num_workers": 0,
        "train.eval_size": 8, "train.log_every": 1, "train.lr": 1e-3, "train.image_lr": 1e-3,
    }  # fmt: skip
    overrides |= {f"train.{k}": v for k, v in train.items()}
    cfg = load_preset("ht-tiny")
    d = cfg.to_dict()
    for key, value in overrides.items():
        node = d
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(json.dumps(d))
    return path
