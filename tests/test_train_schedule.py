"""What the README says the trainer does, checked by behaviour in a real (tiny) `malm train` run:
warm-up + cosine learning rate, a separate image-backbone learning rate, image freezing for the first
epochs, and `best` chosen by validation image→recipe R@1 (not the last epoch, not the loss)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from malm.cli import app
from malm.training import train as train_mod
from malm.training.checkpoint import load_model
from malm.training.config import TrainConfig

LR, IMAGE_LR, WARMUP, MIN_RATIO = 1e-3, 2e-4, 3, 0.1
EPOCHS, STEPS_PER_EPOCH = 3, 4  # 16 training pairs, batch 4
TOTAL = EPOCHS * STEPS_PER_EPOCH


def expected_factor(step: int) -> float:
    """Linear warm-up over WARMUP steps to the peak, then half a cosine down to MIN_RATIO at the last step."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    t = (step - WARMUP) / (TOTAL - WARMUP)
    return MIN_RATIO + (1 - MIN_RATIO) * (1 + math.cos(math.pi * t)) / 2


def test_lr_factor_values() -> None:
    tc = TrainConfig(warmup_steps=WARMUP, min_lr_ratio=MIN_RATIO)
    got = [tc.lr_factor(s, TOTAL) for s in range(TOTAL + 1)]
    assert got[:WARMUP + 1] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert got[WARMUP + (TOTAL - WARMUP) // 2] == pytest.approx(
        MIN_RATIO + (1 - MIN_RATIO) * (1 + math.cos(math.pi * 4 / 9)) / 2)
    assert got[-1] == pytest.approx(MIN_RATIO)
    assert got == pytest.approx([expected_factor(s) for s in range(TOTAL + 1)])
    assert all(a >= b for a, b in zip(got[WARMUP:], got[WARMUP + 1:], strict=False))  # decays after the peak
    # warmup_fraction when warmup_steps is 0: 10% of 50 steps = 5 warm-up steps.
    assert TrainConfig(warmup_fraction=0.1).lr_factor(4, 50) == pytest.approx(1.0)
    assert TrainConfig(warmup_fraction=0.1).lr_factor(1, 50) == pytest.approx(0.4)


class _Recorder:
    """Wraps AdamW.step: per step and per group kind, the lr used and the largest parameter change."""

    steps: list[dict[str, tuple[float, float]]] = []
    after: list[torch.Tensor] = []  # a copy of one non-image weight after each step

    @staticmethod
    def install(monkeypatch: pytest.MonkeyPatch) -> None:
        real = torch.optim.AdamW.step
        _Recorder.steps, _Recorder.after = [], []

        def step(self: torch.optim.AdamW, *a: Any, **k: Any) -> Any:
            before = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]
            out = real(self, *a, **k)
            rec: dict[str, tuple[float, float]] = {}
            for g, old in zip(self.param_groups, before, strict=True):
                change = max(float((p.detach() - o).abs().max()) for p, o in zip(g["params"], old, strict=True))
                lr, prev = g["lr"], rec.get(g["kind"], (g["lr"], 0.0))
                assert lr == prev[0], "groups of one kind share a learning rate"
                rec[g["kind"]] = (lr, max(prev[1], change))
            _Recorder.steps.append(rec)
            other = next(g for g in self.param_groups if g["kind"] == "other" and g["weight_decay"] > 0)
            _Recorder.after.append(other["params"][0].detach().clone())
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.fixture
def data(tiny_data: Path) -> Path:
    return tiny_data  # 16 training pairs, 8 val


def test_schedule_image_lr_freezing_and_best(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             tiny_config: Any) -> None:
    _Recorder.install(monkeypatch)
    # Validation R@1 scripted per epoch (the real validation runs; only its R@1 is replaced): the best is
    # epoch 2, neither the first nor the last.
    script = iter([20.0, 60.0, 40.0])
    real_validate = train_mod.validate

    def validate(*a: Any, **k: Any) -> dict[str, Any]:
        m = real_validate(*a, **k)
        return {**m, "im2recipe": {**m["im2recipe"], "R@1": next(script)}}

    monkeypatch.setattr(train_mod, "validate", validate)
    cfg = tiny_config(tmp_path / "c.json", epochs=EPOCHS, batch_size=4, lr=LR, image_lr=IMAGE_LR,
                      warmup_steps=WARMUP, min_lr_ratio=MIN_RATIO, freeze_image_epochs=1, eval_every=1)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--no-progress", "--data", str(data), "--preset", str(cfg),
                                   "--out", str(out)], catch_exceptions=True)
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    steps = _Recorder.steps
    assert len(steps) == TOTAL and all(set(s) == {"image", "other"} for s in steps)

    for i, s in enumerate(steps):
        other_lr, other_change = s["other"]
        image_lr, image_change = s["image"]
        # Warm-up + cosine on the peak lr of each group.
        assert other_lr == pytest.approx(LR * expected_factor(i), rel=1e-6), i
        assert other_change > 0, i
        if i < STEPS_PER_EPOCH:  # epoch 1: the image backbone is frozen (lr 0, weights unchanged)
            assert image_lr == 0.0 and image_change == 0.0, (i, s)
        else:  # then it trains at its own, separate peak lr
            assert image_lr == pytest.approx(IMAGE_LR * expected_factor(i), rel=1e-6), i
            assert image_change > 0, i
    # The logged lr is the one used (metrics.jsonl, every step at log_every 1).
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [x["lr"] for x in lines if x["type"] == "train"]
    assert logged == pytest.approx([LR * expected_factor(i) for i in range(TOTAL)], rel=1e-6)

    # `best` is the epoch with the highest validation R@1 (epoch 2), with that epoch's weights.
    best = json.loads((out / "best.json").read_text())
    assert best["epoch"] == 2 and best["best_r1"] == 60.0 and best["step"] == 2 * STEPS_PER_EPOCH
    name, weight = _tracked_weight(out)
    assert torch.equal(load_model(out, "best").model.state_dict()[name], weight(2 * STEPS_PER_EPOCH))
    assert torch.equal(load_model(out, "last").model.state_dict()[name], weight(TOTAL))
    assert not torch.equal(weight(2 * STEPS_PER_EPOCH), weight(TOTAL))


def _tracked_weight(out: Path) -> tuple[str, Any]:
    """The state-dict name of the weight `_Recorder.after` copied, and its value after a given step."""
    last = load_model(out, "last").model.state_dict()
    final = _Recorder.after[-1]
    names = [k for k, v in last.items() if v.shape == final.shape and torch.equal(v, final)]
    assert len(names) == 1, names
    return names[0], lambda step: _Recorder.after[step - 1]
