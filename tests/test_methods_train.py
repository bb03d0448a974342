"""TNLBT and MALM through the real `malm train` entry point: tiny runs, ablation switches, EMA, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from malm.cli import app
from malm.errors import MalmError
from malm.training.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


def _train(args: list[str]) -> object:
    return CliRunner().invoke(app, ["train", "--no-progress", *args], catch_exceptions=True)


def _train_lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["type"] == "train"]


@pytest.fixture
def data(tiny_data: Path) -> Path:
    return tiny_data


def test_malm_tiny_trains_with_all_its_losses_and_an_ema_teacher(data: Path, tmp_path: Path, tiny_config: Callable[..., Path]) -> None:
    out = tmp_path / "malm"
    cfg = tiny_config(tmp_path / "malm.json", "malm-tiny", {"loss.self_distill.ema_decay": 0.5})
    res = _train(["--data", str(data), "--preset", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    train = _train_lines(out)
    assert [x["step"] for x in train] == [1, 2, 3, 4]
    for key in ("triplet_loss", "recipe_ssl_loss", "match_itm_loss", "match_local_loss", "distill_loss"):
        assert all(np.isfinite(x[key]) and x[key] > 0 for x in train), key
    # The resumable state holds the teacher; after 4 EMA updates (decay 0.5) it is close to, not equal to,
    # the student, and it is not the student's initial weights either.
    state = load_file(str(out / "last.state.safetensors"))
    student = state["task.model.image_encoder.blocks.0.attn.qkv.weight"]
    teachers = [
        k
        for k in state
        if k.startswith("task.objectives.") and k.endswith("teacher.encoder.blocks.0.attn.qkv.weight")
    ]
    assert len(teachers) == 1
    teacher = state[teachers[0]]
    assert not torch.equal(teacher, student)
    assert (teacher - student).abs().max() < 0.5 * (student.abs().max())
    assert bool(state[teachers[0].replace("teacher.encoder.blocks.0.attn.qkv.weight", "teacher_ready")])
    # Inference needs only the two encoders: the weights file loads into the plain retrieval model.
    loaded = load_model(out, tag="last")
    assert not any("teacher" in k or "matching" in k for k in loaded.model.state_dict())


def test_tnlbt_tiny_trains_with_a_growing_margin_and_the_caption_loss(data: Path, tmp_path: Path, tiny_config: Callable[..., Path]) -> None:
    out = tmp_path / "tnlbt"
    cfg = tiny_config(tmp_path / "tnlbt.json", "tnlbt-tiny")
    res = _train(["--data", str(data), "--preset", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    train = _train_lines(out)
    assert all(np.isfinite(x["caption_loss"]) and x["caption_loss"] > 0 for x in train)
    margins = [x["margin"] for x in train]
    # linear 0.05 -> 0.3 over 4 steps, read at progress step/total before each step
    np.testing.assert_allclose(margins, [0.05, 0.05 + 0.25 / 4, 0.05 + 0.5 / 4, 0.05 + 0.75 / 4], atol=1e-6)


def test_ablation_switches_are_config_keys(data: Path, tmp_path: Path, tiny_config: Callable[..., Path]) -> None:
    cfg = tiny_config(tmp_path / "m.json", "malm-tiny", epochs=1)
    out = tmp_path / "nolocal"
    res = _train(["--data", str(data), "--preset", str(cfg), "--out", str(out),
                  "--set", "loss.matching.local_weight=0", "--set", "loss.self_distill.weight=0",
                  "--set", "loss.mask.ratio=0.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    keys = set(_train_lines(out)[0])
    assert "match_itm_loss" in keys and "match_local_loss" not in keys and "distill_loss" not in keys
    assert json.loads((out / "config.json").read_text())["loss"]["mask"]["ratio"] == 0.5
    # pair negatives: the global matching loss over decoded (image, negative recipe) pairs
    res = _train(["--data", str(data), "--preset", str(cfg), "--out", str(tmp_path / "pairs"),
                  "--set", "loss.matching.mode=paper", "--set", "loss.matching.pair_negatives=2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert all(np.isfinite(x["match_global_loss"]) for x in _train_lines(tmp_path / "pairs"))
    # distillation without masking has nothing to predict: a clear error, not a silent no-op
    res = _train(["--data", str(data), "--preset", str(cfg), "--out", str(tmp_path / "bad"),
                  "--set", "loss.mask.enabled=false"])  # fmt: skip
    assert isinstance(res.exception, MalmError) and "loss.self_distill needs loss.mask" in str(res.exception)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (ROOT / ".venv/bin/torchrun").exists(),
                    reason="torchrun (part of torch) is not on PATH")  # fmt: skip
def test_ddp_two_process_gloo_run_with_the_new_losses(data: Path, tmp_path: Path, tiny_config: Callable[..., Path]) -> None:
    """MALM's matching (gathered InfoNCE), distillation and TNLBT's cross decoder under 2-rank DDP."""
    cfg = tiny_config(tmp_path / "c.json", "malm-tiny", {"loss.cross_decoder.weight": 1.0,
                                                         "loss.dynamic_margin.enabled": True}, epochs=1)
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or str(ROOT / ".venv/bin/torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # The trainer, with each rank writing its model's weights at the start (optimizer built) and at each save.
    wrapper = tmp_path / "rank_dump.py"
    wrapper.write_text(RANK_DUMP)
    cmd = [torchrun, "--nproc_per_node", "2", "--standalone", str(wrapper), "--data", str(data),
           "--preset", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = _train_lines(out)
    assert [x["step"] for x in train] == [1, 2]
    for key in ("triplet_loss", "caption_loss", "match_itm_loss", "match_local_loss", "distill_loss"):
        assert all(np.isfinite(x[key]) and x[key] > 0 for x in train), key
    # Both ranks start from the same weights, train (the weights moved), and stay identical: DDP averaged
    # the gradients of the two ranks' different halves of each batch.
    start = [load_file(str(out / f"rank{r}-start.safetensors")) for r in (0, 1)]
    end = [load_file(str(out / f"rank{r}-step2.safetensors")) for r in (0, 1)]
    assert start[0].keys() == end[1].keys() and len(start[0]) > 10
    moved = 0
    for k in start[0]:
        torch.testing.assert_close(start[0][k], start[1][k], atol=0, rtol=0, msg=k)
        torch.testing.assert_close(end[0][k], end[1][k], atol=1e-6, rtol=1e-5, msg=k)
        moved += not torch.equal(start[0][k], end[0][k])
    assert moved > len(start[0]) // 2, (moved, len(start[0]))
    # What rank 0 saved as `last` holds those weights.
    last = {tuple(v.shape): v for v in load_file(str(out / "last.safetensors")).values()}
    assert any(torch.equal(last.get(tuple(v.shape), v * 0), v) for v in end[0].values() if v.numel() > 100)


RANK_DUMP = """
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import malm.training.run_state as R
from malm.cli import main

OUT = Path(sys.argv[sys.argv.index("--out") + 1])
real_save, real_adamw = R.save, torch.optim.AdamW


def _dump(optimizer, tag):
    # Parameters in optimizer order (the same on every rank), named by position.
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sd = {f"g{i}p{j}": p.detach().clone().contiguous()
          for i, g in enumerate(optimizer.param_groups) for j, p in enumerate(g["params"])}
    save_file(sd, str(OUT / f"rank{rank}-{tag}.safetensors"))


def _save(out, info, task, optimizer, config, pos, *a, **k):
    _dump(optimizer, f"step{pos.step}")
    return real_save(out, info, task, optimizer, config, pos, *a, **k)


class AdamW(real_adamw):
    started = False

    def step(self, *a, **k):  # before the first update: the weights every rank starts from
        if not AdamW.started:
            AdamW.started = True
            _dump(self, "start")
        return super().step(*a, **k)


R.save = _save
torch.optim.AdamW = AdamW
sys.argv = ["malm", "train", *sys.argv[1:]]
main()
"""
