"""A 16-sample training run through the real `malm train` entry point, and its user-facing errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from malm.cli import app
from malm.errors import MalmError
from malm.training.checkpoint import load_model
from malm.training.config import ExperimentConfig, load_preset, preset_names
from malm.training.embed import embed_split


def _train(args: list[str]) -> object:
    return CliRunner().invoke(app, ["train", "--no-progress", *args], catch_exceptions=True)


@pytest.fixture
def data(tiny_data: Path) -> Path:
    return tiny_data


def test_sixteen_sample_run_writes_a_loadable_run(data: Path, tiny_run: Path, tmp_path: Path,
                                                  tiny_config: Callable[..., Path]) -> None:
    out = tiny_run  # `malm train --json` on the 16 pairs (tests/conftest.py)
    summary = json.loads((tiny_run.parent / "summary.json").read_text())
    assert summary["steps"] == 4 and not summary["stopped_early"]
    for name in ("config.json", "vocab.json", "last.safetensors", "last.json", "best.safetensors", "best.json",
                 "last.state.safetensors", "last.state.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["type"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3, 4]
    assert all(np.isfinite(x["loss"]) and x["samples_per_s"] > 0 for x in train)
    assert {x["epoch"] for x in lines if x["type"] == "val"} == {1, 2}
    assert json.loads((out / "last.json").read_text())["step"] == 4

    loaded = load_model(out, tag="best")
    assert loaded.config.name == "test-tiny" and not loaded.model.training
    img, rec, ids = embed_split(out, data, split="test", tag="last")
    assert img.shape == rec.shape == (8, 16) and img.dtype == np.float32 and len(ids) == 8
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rec, axis=1), 1.0, atol=1e-5)

    # The same run cannot be overwritten by accident.
    again = _train(["--data", str(data), "--preset", str(tiny_config(tmp_path / "c.json")), "--out", str(out)])
    assert again.exit_code != 0 and "already holds a run" in str(again.exception)


def test_resume_refuses_a_different_config(data: Path, tmp_path: Path, tiny_config: Callable[..., Path]) -> None:
    cfg = tiny_config(tmp_path / "c.json", epochs=1)
    out = tmp_path / "run"
    assert _train(["--data", str(data), "--preset", str(cfg), "--out", str(out)]).exit_code == 0
    res = _train(["--data", str(data), "--preset", str(cfg), "--out", str(out), "--resume",
                  "--set", "train.lr=0.5", "--set", "loss.triplet_margin=0.1"])
    assert isinstance(res.exception, MalmError)
    assert "loss.triplet_margin" in str(res.exception) and "train.lr" in str(res.exception)


def test_clear_errors(data: Path, tmp_path: Path, tiny_config: Callable[..., Path]) -> None:
    res = _train(["--data", str(data), "--preset", "no-such-preset", "--out", str(tmp_path / "r")])
    assert isinstance(res.exception, MalmError) and "unknown preset 'no-such-preset'" in str(res.exception)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _train(["--data", str(empty), "--preset", str(tiny_config(tmp_path / "c.json")), "--out", str(tmp_path / "r")])
    assert isinstance(res.exception, MalmError) and "layer1.json" in str(res.exception)
    res = _train(["--data", str(data), "--preset", "ht-tiny", "--out", str(tmp_path / "r2"), "--set", "train.foo=1"])
    assert isinstance(res.exception, MalmError) and "train.foo" in str(res.exception)
    res = _train(["--data", str(data), "--out", str(tmp_path / "r3"), "--resume"])
    assert isinstance(res.exception, MalmError) and "no last.state.json" in str(res.exception)


def test_presets_round_trip_and_upgrade() -> None:
    assert {"ht", "ht-tiny", "tnlbt", "tnlbt-tiny", "malm", "malm-tiny"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert ExperimentConfig.from_dict(json.loads(cfg.to_json())) == cfg
    d = load_preset("ht-tiny").to_dict()
    del d["loss"]["self_distill"], d["train"]["log_every"]  # a config written before these fields existed
    old = ExperimentConfig.from_dict(d)
    assert old.loss.self_distill.ema_decay == 0.999 and old.train.log_every == 10
    with pytest.raises(MalmError, match="model.image.widht"):
        ExperimentConfig.from_dict({"model": {"image": {"widht": 3}}})
    with pytest.raises(MalmError, match="multiple of patch_size"):
        load_preset("ht-tiny").with_overrides({"model.image.patch_size": 7})
    big = load_preset("malm")
    assert big.preprocess().size == 224 and big.train.freeze_image_epochs == 20 and big.loss.mask.ratio == 0.75
