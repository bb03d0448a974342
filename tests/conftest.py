"""Shared test fixtures and the one tiny-model config helper.

    tiny_preset(preset="ht-tiny", overrides=None, **train) -> ExperimentConfig: any preset shrunk to run in
                    seconds (TINY, the only copy of those overrides), train.* keys as keyword arguments
    tiny_config(path, ...)                the same written to `path`, to pass as `malm train --preset`
    make_dataset(root, n_train=24, ...)   a Recipe1M-layout folder of random-word recipes with 24x24 photos
    make_recipe1m(root, ...)              a hand-made Recipe1M folder with good and bad records (data tests)
    train_cli(args) -> exit code          `malm train ARGS` in this process (errors raise)

Fixtures: `tiny_data` (session: a 16-pair dataset), `tiny_run` (session: a finished 2-epoch tiny run on it;
read it, never write into it), `tiny_bundle` (session: a 20-recipe SDK bundle of tiny ONNX encoders),
`recipe1m` (the hand-made folder in tmp_path), `tiny_words` (the words make_dataset draws from). The same helpers are fixtures of the same name for tests
that prefer arguments to imports (`tiny_preset`, `tiny_config`, `make_dataset`, `make_recipe1m`, `train_cli`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from malm.training.config import ExperimentConfig, load_preset

# Every preset shrunk to a model that trains in seconds on a few 32 px photos (method switches as shipped).
TINY = {
    "model.image.image_size": 32, "model.image.patch_size": 8, "model.image.width": 32, "model.image.depth": 1,
    "model.image.heads": 2, "model.image.mlp_ratio": 2.0, "model.recipe.width": 32, "model.recipe.heads": 2,
    "model.embed_dim": 16, "data.min_freq": 1, "train.epochs": 2, "train.batch_size": 8, "train.num_workers": 0,
    "train.eval_size": 8, "train.log_every": 1, "train.lr": 1e-3, "train.image_lr": 1e-3,
    "loss.matching.heads": 2, "loss.cross_decoder.heads": 2,
}  # fmt: skip


def tiny_preset(preset: str = "ht-tiny", overrides: dict[str, Any] | None = None, **train: Any) -> ExperimentConfig:
    """`preset` shrunk by TINY, then `overrides` (dotted keys) and `train` (train.* keys)."""
    name = "test-tiny" if preset == "ht-tiny" else f"test-{preset}"
    return load_preset(preset).with_overrides({"name": name, **TINY, **(overrides or {}),
                                               **{f"train.{k}": v for k, v in train.items()}})


def tiny_config(path: Path, preset: str = "ht-tiny", overrides: dict[str, Any] | None = None, **train: Any) -> Path:
    """`tiny_preset(...)` written to `path` as a .json to pass as --preset."""
    path.write_text(tiny_preset(preset, overrides, **train).to_json())
    return path


def train_cli(args: list[str]) -> int:
    """`malm train ARGS` in this process, as the console script runs it; a MalmError propagates."""
    from typer.testing import CliRunner

    from malm.cli import app

    result = CliRunner().invoke(app, ["train", *args], catch_exceptions=False)
    if result.exit_code:
        print(result.output)
    return result.exit_code


# ------------------------------------------------------------------------------------------ datasets


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



# ----------------------------------------------------------------------------- hand-made Recipe1M folder


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


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training pairs (two batches of 8), 8 val, 8 test."""
    return make_dataset(tmp_path_factory.mktemp("tiny-data") / "recipe1m", n_train=16)


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ht-tiny run on `tiny_data` through `malm train --json --report-to tensorboard,csv` (2 epochs,
    4 steps); its JSON summary is `tiny_run.parent / "summary.json"`. Shared: read it, never write into it."""
    from typer.testing import CliRunner

    from malm.cli import app

    root = tmp_path_factory.mktemp("tiny-run")
    res = CliRunner().invoke(app, ["train", "--no-progress", "--data", str(tiny_data), "--preset",
                                   str(tiny_config(root / "c.json")), "--out", str(root / "run"), "--json",
                                   "--report-to", "tensorboard,csv"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (root / "summary.json").write_text(res.stdout.strip().splitlines()[-1])
    return root / "run"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-recipe bundle of tiny ONNX encoders (tests/_sdk_bundle.py); shared: copy it before changing it."""
    from _sdk_bundle import make_bundle

    return make_bundle(tmp_path_factory.mktemp("tiny-bundle") / "bundle", 20)


@pytest.fixture
def recipe1m(tmp_path: Path) -> Path:
    return make_recipe1m(tmp_path / "recipe1m")


@pytest.fixture(scope="session", name="tiny_preset")
def _tiny_preset_fixture() -> Callable[..., ExperimentConfig]:
    return tiny_preset


@pytest.fixture(scope="session", name="tiny_config")
def _tiny_config_fixture() -> Callable[..., Path]:
    return tiny_config


@pytest.fixture(scope="session", name="make_dataset")
def _make_dataset_fixture() -> Callable[..., Path]:
    return make_dataset


@pytest.fixture(scope="session")
def tiny_words() -> list[str]:
    """The words `make_dataset` draws titles and ingredients from."""
    return list(WORDS)


@pytest.fixture(scope="session", name="make_recipe1m")
def _make_recipe1m_fixture() -> Callable[..., Path]:
    return make_recipe1m


@pytest.fixture(scope="session", name="train_cli")
def _train_cli_fixture() -> Callable[[list[str]], int]:
    return train_cli
