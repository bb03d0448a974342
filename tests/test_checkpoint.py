"""Checkpoints: an interrupted-then-resumed run ends with bit-identical weights (every exact-resume case lives
here); files are validated on load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from malm.errors import MalmError
from malm.training.checkpoint import load_model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_dataset: Callable[..., Path]) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "recipe1m", n_train=24)


@pytest.fixture
def run(data: Path, train_cli: Callable[[list[str]], int]) -> Callable[..., None]:
    def _run(cfg: Path, out: Path, *extra: str) -> None:
        assert train_cli(["--data", str(data), "--preset", str(cfg), "--out", str(out), "--no-progress", *extra]) == 0

    return _run


def _same_tensors(a: Path, b: Path) -> dict[str, torch.Tensor]:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    return ta


# Exact resume, in one place. 24 pairs, batch 8: 3 steps per epoch. Each case: (preset, config overrides,
# flags of the interrupted run, the step its last resumable state holds (None: killed before the first)).
RESUME_CASES = {
    # Killed after step 4 (mid-epoch 2, state saved every step), without workers.
    "mid-epoch": ("ht-tiny", {"train.num_workers": 0}, ["--save-every", "1", "--stop-after-steps", "4"], 4),
    # Killed after step 3 before that epoch's end-of-epoch save (the last saved state is step 2), a worker.
    "before-epoch-save": ("ht-tiny", {"train.num_workers": 1}, ["--save-every", "1", "--stop-after-steps", "3"], 2),
    # The state every 2 epochs only: killed in epoch 3 resumes from the end of epoch 2 ...
    "state-every-2": ("ht-tiny", {"train.epochs": 3, "train.state_every": 2}, ["--stop-after-steps", "7"], 6),
    # ... and killed before the first state was saved, --resume starts over.
    "no-state-yet": ("ht-tiny", {"train.epochs": 3, "train.state_every": 2}, ["--stop-after-steps", "2"], None),
    # MALM + TNLBT parts: masks, the EMA teacher and its first-step copy, predictor, margin schedule.
    "malm-teacher": ("malm-tiny", {"train.epochs": 1, "loss.cross_decoder.weight": 1.0,
                                   "loss.dynamic_margin.enabled": True}, ["--save-every", "1", "--stop-after-steps", "1"], 1),
}  # fmt: skip


@pytest.mark.parametrize("case", RESUME_CASES)
def test_an_interrupted_run_resumes_to_identical_weights(run: Callable[..., None], tiny_config: Callable[..., Path],
                                                        tmp_path: Path, case: str) -> None:
    preset, overrides, cut_flags, saved = RESUME_CASES[case]
    cfg = tiny_config(tmp_path / "c.json", preset, overrides)
    run(cfg, tmp_path / "full")
    run(cfg, tmp_path / "cut", *cut_flags)
    if saved is None:
        assert not (tmp_path / "cut" / "last.state.json").exists()
    else:
        state: dict[str, Any] = json.loads((tmp_path / "cut" / "last.state.json").read_text())
        assert state["step"] == saved and state["batch_in_epoch"] == saved % 3
    run(cfg, tmp_path / "cut", "--resume")
    _same_tensors(tmp_path / "full" / "last.safetensors", tmp_path / "cut" / "last.safetensors")
    full_state = _same_tensors(tmp_path / "full" / "last.state.safetensors", tmp_path / "cut" / "last.state.safetensors")
    if preset == "malm-tiny":
        assert any("teacher.encoder" in k for k in full_state)
    total = json.loads((tmp_path / "full" / "last.json").read_text())["step"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == list(range(1, total + 1))  # lines logged after the saved state were dropped on resume


def test_load_model_validates_files(run: Callable[..., None], tiny_config: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(tiny_config(tmp_path / "c.json", epochs=1), out)
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
