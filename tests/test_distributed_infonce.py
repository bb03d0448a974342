"""Gathered InfoNCE under a real 2-process torch.distributed (gloo) group, forward AND backward, against a
single-process loss over the full batch (the reference).

Each rank holds half the batch, gathers every rank's rows with `all_gather_with_grad` and computes the loss of
its own rows against all of them. DDP averages parameter gradients over ranks, so the mean of the rank losses
must equal the full-batch loss and (rank gradient of its slice) / world must equal the full-batch gradient of
that slice. Tensors go through safetensors files (no pickle).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from malm.training.losses.matching import GlobalMatchingLoss, LocalMatchingLoss

ROOT = Path(__file__).resolve().parent.parent
WORLD, PER_RANK = 2, 3

WORKER = """
    import sys
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from malm.training.distributed import all_gather_with_grad
    from malm.training.losses.matching import GlobalMatchingLoss, LocalMatchingLoss
    rank, world, init, inputs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    t = load_file(inputs)
    result = {}
    for kind, loss_fn in (("global", GlobalMatchingLoss(0.1)), ("local", LocalMatchingLoss(0.1))):
        n = t[kind + "_a"].shape[0] // world
        a = t[kind + "_a"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
        b = t[kind + "_b"][rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = loss_fn(a, b, gather=all_gather_with_grad, rank=rank)
        loss.backward()
        result |= {kind + "_loss": loss.detach().reshape(1), kind + "_ga": a.grad, kind + "_gb": b.grad}
    save_file(result, out)
    dist.destroy_process_group()
"""


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * PER_RANK
    return {"global_a": torch.randn(n, 8, generator=g, dtype=torch.float64),
            "global_b": torch.randn(n, 8, generator=g, dtype=torch.float64),
            "local_a": torch.randn(n, 4, 8, generator=g, dtype=torch.float64),
            "local_b": torch.randn(n, 4, 8, generator=g, dtype=torch.float64)}


@pytest.mark.slow  # two processes importing torch: ~15 s quiet, ~70 s on the loaded 2-core machine
def test_gathered_infonce_forward_and_backward_match_the_full_batch(tmp_path: Path) -> None:
    inputs = _inputs()
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(r), str(WORLD),
                               str(tmp_path / "init"), str(tmp_path / "inputs.safetensors"),
                               str(tmp_path / f"rank{r}.safetensors")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(WORLD)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]

    for kind, loss_fn in (("global", GlobalMatchingLoss(0.1)), ("local", LocalMatchingLoss(0.1))):
        a = inputs[kind + "_a"].clone().requires_grad_(True)
        b = inputs[kind + "_b"].clone().requires_grad_(True)
        full = loss_fn(a, b)
        full.backward()
        assert a.grad is not None and b.grad is not None
        mean = sum(float(r[kind + "_loss"]) for r in ranks) / WORLD
        assert mean == pytest.approx(float(full.detach()), abs=1e-10), kind
        for r, res in enumerate(ranks):
            sl = slice(r * PER_RANK, (r + 1) * PER_RANK)
            # DDP divides the summed parameter gradients by the world size.
            torch.testing.assert_close(res[kind + "_ga"] / WORLD, a.grad[sl], atol=1e-10, rtol=1e-8, msg=kind)
            torch.testing.assert_close(res[kind + "_gb"] / WORLD, b.grad[sl], atol=1e-10, rtol=1e-8, msg=kind)
        # Not vacuous: the negatives of the other rank matter (a rank-local loss has other values).
        local_only = sum(float(loss_fn(inputs[kind + "_a"][s], inputs[kind + "_b"][s]))
                         for s in (slice(0, PER_RANK), slice(PER_RANK, 2 * PER_RANK))) / WORLD
        assert abs(local_only - float(full.detach())) > 1e-3, kind
