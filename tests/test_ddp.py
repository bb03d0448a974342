"""2-process DDP on CPU (gloo) through torchrun: with embeddings gathered with gradient, two ranks of 4 train
exactly like one process with the global batch of 8 (every rank sees every negative)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_rank_gloo_run_matches_single_process(tmp_path: Path, make_dataset: Callable[..., Path],
                                                   tiny_config: Callable[..., Path],
                                                   train_cli: Callable[[list[str]], int]) -> None:
    data = make_dataset(tmp_path / "data", n_train=16)
    # Losses over the gathered global batch only, no dropout: the two runs must then agree.
    cfg_path = tiny_config(tmp_path / "c.json", overrides={"loss.recipe_ssl_weight": 0.0, "model.recipe.dropout": 0.0})

    assert train_cli(["--data", str(data), "--preset", str(cfg_path), "--out", str(tmp_path / "single"), "--no-progress"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "malm", "train", "--json", "--data", str(data),
           "--preset", str(cfg_path), "--out", str(tmp_path / "ddp"), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 × cpu" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # printed by rank 0 only
    assert summary["steps"] == 4

    single = load_file(str(tmp_path / "single" / "last.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "last.safetensors"))
    for k in single:
        a, b = ddp[k], single[k]
        if k.endswith(("in_proj_bias", "qkv.bias")):
            # Attention is invariant to the key bias: its true gradient is 0, so what it gets is float
            # noise that differs with reduction order and that Adam scales up to lr-sized steps.
            third = a.shape[0] // 3
            a, b = torch.cat([a[:third], a[2 * third :]]), torch.cat([b[:third], b[2 * third :]])
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=k)
    lines = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    single_losses = [x["triplet_loss"] for x in lines("single") if x["type"] == "train"]
    ddp_losses = [x["triplet_loss"] for x in lines("ddp") if x["type"] == "train"]
    assert len(single_losses) == len(ddp_losses) == 4
    for a, b in zip(single_losses, ddp_losses, strict=True):
        assert abs(a - b) < 1e-4
