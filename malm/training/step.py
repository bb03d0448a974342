"""One optimizer step and what the loop keeps between log lines: `train_step` (no host sync), the device-side
metric `Window`, the AdamW the task's groups train with, and the progress bar."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import torch

from malm.errors import MalmError
from malm.progress import progress
from malm.training.data.dataset import device_transform
from malm.training.embed import to_device
from malm.training.task import Task


def build_optimizer(task: Task, tc: Any, device: torch.device) -> torch.optim.Optimizer:
    # The fused CUDA kernel updates every parameter in one launch and reads no step count on the host.
    return torch.optim.AdamW(task.param_groups(tc), lr=tc.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


class Window:
    """Training metrics summed where they were computed (on the device) between log lines, and the first
    step whose loss was not finite. `read` is the step loop's only host sync; checking per step would
    stall the GPU queue every step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.t = time.perf_counter()
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.wait = 0.0  # seconds the loop spent waiting for the loader in this window
        self.last_wait = 0.0  # ... in the window `read` last returned

    def timed(self, loader: Any) -> Iterator[Any]:
        """Iterate `loader`, adding the time spent blocked on it to this window."""
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            yield batch

    def add(self, report: dict[str, Any], total: torch.Tensor, step: int) -> None:
        for k, v in report.items():
            v = v.detach().double() if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += 1
        bad = ~torch.isfinite(total.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def _raise_if_bad(self, first_bad: int) -> None:
        if first_bad >= 0:
            raise MalmError(f"loss became non-finite at step {first_bad}: lower train.lr or check the data")

    def check(self) -> None:
        """Raise if a loss so far was not finite (before saving weights that may hold NaNs)."""
        self._raise_if_bad(int(self.first_bad.item()))

    def read(self) -> tuple[dict[str, float], float, int]:
        """(mean of each metric, seconds, steps) of the window, then start a new one. One host sync."""
        keys = list(self.sums)
        values = torch.stack([self.sums[k].to(self.device) for k in keys]
                             + [self.first_bad.to(self.device, torch.float64)]).tolist()
        self._raise_if_bad(int(values[-1]))
        now = time.perf_counter()
        out = ({k: v / max(1, self.n) for k, v in zip(keys, values, strict=False)}, now - self.t, self.n)
        self.sums, self.n, self.t = {}, 0, now
        self.last_wait, self.wait = self.wait, 0.0
        return out


def train_step(model_ddp: torch.nn.Module, task: Task, optimizer: torch.optim.Optimizer, params: list[Any],
               batch: dict[str, Any], pre: Any, lr_factor: float, image_frozen: bool, progress: float,
               amp: bool, grad_clip: float, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """One optimizer step on one batch; returns (total loss, report), both left on the device (no host sync)."""
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if (image_frozen and g["kind"] in ("image", "stem")) else g["base_lr"] * lr_factor
    batch = device_transform(to_device(batch, device), pre)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        losses, report = model_ddp(batch, progress)
    total = Task.total(losses)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        report["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    task.after_step()
    report["loss"] = total.detach()
    return total, report


def step_frac(batch_in_epoch: int, steps_per_epoch: int) -> float:
    return round(batch_in_epoch / max(1, steps_per_epoch), 4)


class TrainProgress:
    """The training bar (malm.progress) with loss and samples/s; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self._stack = ExitStack()
        self.bar = self._stack.enter_context(progress(
            "train", total=total, enabled=enabled, completed=done, fields={"loss": math.nan, "speed": 0.0},
            fmt="loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} samples/s", transient=False))

    def update(self, step: int, loss: float | None = None, speed: float | None = None) -> None:
        """Loss and speed come only at log steps (reading them is a host sync); in between, the count."""
        fields = {} if loss is None else {"loss": loss, "speed": speed}
        self.bar.update(completed=step, **fields)

    def close(self) -> None:
        self._stack.close()
