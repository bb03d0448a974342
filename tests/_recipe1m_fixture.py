"""A tiny hand-made Recipe1M folder (layer1/layer2/det_ingrs + JPEGs) for the data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")


def image_path(images: Path, partition: str, image_id: str) -> Path:
    return images.joinpath(partition, *image_id[:4], image_id)


def recipe(rid: str, partition: str, title: str, ingredients: list[str], instructions: list[str]) -> dict[str, Any]:
    return {
        "id": rid, "title": title, "partition": partition, "url": f"http://example.com/{rid}",
        "ingredients": [{"text": t} for t in ingredients],
        "instructions": [{"text": t} for t in instructions],
    }  # fmt: skip


GOOD = [
    recipe("r0", "train", "Tomato Pasta", ["1 1/2 cups tomato", "12 cup olive oil", "pasta"],
           ["Boil the pasta.", "Add tomato and oil."]),
    recipe("r1", "train", "Green Salad", ["lettuce", "2 tomato", "olive oil"], ["Mix the lettuce and tomato."]),
    recipe("r2", "train", "Tomato Soup", ["tomato", "water", "salt"], ["Boil tomato in water.", "Add salt."]),
    recipe("r3", "val", "Pasta Salad", ["pasta", "lettuce"], ["Mix pasta and lettuce."]),
    recipe("r4", "test", "Saffron Rice", ["rice", "saffron"], ["Cook the rice with saffron."]),
    recipe("r5", "test", "Plain Rice", ["rice", "water"], ["Cook the rice."]),
]

BAD = [
    {"id": "b0", "partition": "train", "ingredients": [{"text": "x"}], "instructions": [{"text": "y"}]},  # no title
    dict(recipe("b1", "train", "T", [], ["y"])),  # empty ingredients
    dict(recipe("b2", "train", "T", ["x"], ["y"]), instructions=[{"text": 5}]),  # non-string text
    dict(recipe("r0", "train", "Duplicate", ["x"], ["y"])),  # duplicate id
    dict(recipe("b4", "holdout", "T", ["x"], ["y"])),  # unknown partition
    "not an object",
]

# Listed images: r0 has 2 (both present), r1 has 2 (one missing), r2 none listed, r3 1 present,
# r4 1 present, r5 1 missing. So paired: train 2, val 1, test 1; missing: train 1, test 1.
LAYER2 = [
    {"id": "r0", "images": [{"id": "abcd0001.jpg"}, {"id": "abce0002.jpg"}]},
    {"id": "r1", "images": [{"id": "bcde0003.jpg"}, {"id": "bcdf0004.jpg"}]},
    {"id": "r3", "images": [{"id": "cdef0005.jpg"}]},
    {"id": "r4", "images": [{"id": "defa0006.jpg"}]},
    {"id": "r5", "images": [{"id": "efab0007.jpg"}]},
    {"id": "zz", "images": [{"id": "ffff0008.jpg"}]},  # a recipe layer1 does not have
]
PRESENT = {"r0": ["abcd0001.jpg", "abce0002.jpg"], "r1": ["bcde0003.jpg"], "r3": ["cdef0005.jpg"], "r4": ["defa0006.jpg"]}

DET = [
    {"id": "r0", "ingredients": [{"text": "tomato"}, {"text": "olive oil"}, {"text": "pasta"}],
     "valid": [True, True, False]},
    {"id": "r4", "ingredients": [{"text": "rice"}, {"text": "saffron"}], "valid": [True, True]},
]


def make_recipe1m(root: Path, images_subdir: str | None = "images", bad: bool = True, det: bool = True) -> Path:
    """Write the fixture under `root`; images go to `root/images_subdir` (or `root` itself when None)."""
    root.mkdir(parents=True, exist_ok=True)
    records = GOOD[:3] + (BAD if bad else []) + GOOD[3:]
    (root / "layer1.json").write_text(json.dumps(records))
    (root / "layer2.json").write_text(json.dumps(LAYER2))
    if det:
        (root / "det_ingrs.json").write_text(json.dumps(DET))
    images = root / images_subdir if images_subdir else root
    partitions = {r["id"]: r["partition"] for r in GOOD}
    for seed, (rid, ids) in enumerate(PRESENT.items()):
        for k, image_id in enumerate(ids):
            write_image(image_path(images, partitions[rid], image_id), seed * 10 + k)
    return root
