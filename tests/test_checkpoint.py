"""Checkpoints: an interrupted-then-resumed run ends with bit-identical weights; files are validated on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tiny_run import make_dataset, tiny_config
from safetensors.torch import load_file

from malm.errors import MalmError
from malm.training.checkpoint import load_model
from malm.training.train import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "recipe1m", n_train=24)


def _run(data: Path, cfg: Path, out: Path, *extra: str) -> None:
    assert main(["--data", str(data), "--preset", str(cfg), "--out", str(out), "--no-progress", *extra]) == 0


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.mark.parametrize(("stop", "workers", "saved"), [(4, 0, 4), (3, 1, 2)])
def test_resume_after_interruption_gives_identical_weights(data: Path, tmp_path: Path, stop: int, workers: int,
                                                           saved: int) -> None:
    # 24 pairs, batch 8: 3 steps per epoch, 2 epochs. Killed after step 4 (mid-epoch 2, state saved at 4) or
    # after step 3 but before that epoch's end-of-epoch save (the last saved state is step 2).
    cfg = tiny_config(tmp_path / "c.json", num_workers=workers)
    _run(data, cfg, tmp_path / "full")
    _run(data, cfg, tmp_path / "cut", "--save-every", "1", "--stop-after-steps", str(stop))
    state = json.loads((tmp_path / "cut" / "last.state.json").read_text())
    assert state["step"] == saved and state["batch_in_epoch"] == saved % 3
    _run(data, cfg, tmp_path / "cut", "--resume")
    _same_tensors(tmp_path / "full" / "last.safetensors", tmp_path / "cut" / "last.safetensors")
    _same_tensors(tmp_path / "full" / "last.state.safetensors", tmp_path / "cut" / "last.state.safetensors")
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # lines logged after the saved state were dropped on resume


def test_load_model_validates_files(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(data, tiny_config(tmp_path / "c.json", epochs=1), out)
    assert load_model(out, "last").meta["step"] == 3
    with pytest.raises(MalmError, match="tag"):
        load_model(out, "middle")
    meta = json.loads((out / "last.json").read_text())
    (out / "last.json").write_text(json.dumps({**meta, "step": 99}))
    # A torn save (kill -9 between the two writes): the weights' header carries their own JSON, so it loads.
    assert load_model(out, "last").meta["step"] == 3
    (out / "best.safetensors").write_bytes(b"garbage")
    with pytest.raises(MalmError, match="not a readable safetensors"):
        load_model(out, "best")
    with pytest.raises(MalmError, match="not found"):
        load_model(tmp_path / "nope")
