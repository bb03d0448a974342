"""A run directory across restarts: the config a run trains (`resolve_config`), where its loop starts
(`start`: step 0 in a new run, the saved resumable state with `--resume`) and what it saves (`save`).

Weights go to `last` (and `best`) at every epoch end; the resumable state (optimizer, RNG, position) every
`train.state_every` epochs and at the last. `--resume` continues from the newest state, re-running the steps
after it, so a resumed run ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from malm._atomic import write_text_atomic
from malm.errors import MalmError
from malm.training import checkpoint as ckpt
from malm.training import distributed as dist_util
from malm.training.config import ExperimentConfig, diff_configs, load_preset
from malm.training.task import Task

# Keys that may differ on --resume without changing the result.
RESUME_MAY_DIFFER = ("train.num_workers",)
# The order of parameters the optimizer state is saved in; states from before the shared transformer
# block (separate q/k/v projections) cannot be mapped onto today's parameters.
PARAM_LAYOUT = "shared-block-1"


def _no_best() -> dict[str, Any]:
    return {"r1": -1.0, "epoch": -1, "metrics": None}


@dataclass
class Position:
    """Where the loop stands, as the resumable state stores it."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch being trained (epochs done, at an epoch's end)
    batch: int = 0  # batches of `epoch` done
    best: dict[str, Any] = field(default_factory=_no_best)  # best validation R@1 so far, its epoch and metrics


def resolve_cli_config(preset: str | None, overrides: dict[str, Any], resume_dir: Path | None) -> ExperimentConfig | None:
    """The config `malm train` flags name: the preset with the overrides; with `--resume` and no preset, the
    run's saved config (with overrides, if any; None without: `resolve_config` reads it)."""
    if preset is not None:
        return load_preset(preset).with_overrides(overrides)
    if resume_dir is not None:
        return ckpt.read_config(resume_dir).with_overrides(overrides) if overrides else None
    raise MalmError("--preset is required (or --resume to continue a run)")


def resolve_config(out_dir: Path, config: ExperimentConfig | None, resume: bool) -> ExperimentConfig:
    """The config to train: `config` for a new run; for `--resume` the run's own (or `config`, if it agrees)."""
    saved_path = out_dir / "config.json"
    if resume:
        if not (out_dir / "last.state.json").exists() and not saved_path.exists():
            raise MalmError(f"--resume: {out_dir} has no last.state.json to resume from")
        saved = ckpt.read_config(out_dir)
        if config is None:
            return saved
        differ = [k for k in diff_configs(saved.to_dict(), config.to_dict()) if k not in RESUME_MAY_DIFFER]
        if differ:
            raise MalmError(f"--resume: the config differs from the run's config.json in {', '.join(differ)}; "
                            "resume with the same settings (or omit --preset/--set to use the saved config)")
        return config
    if config is None:
        raise MalmError("no config: pass --preset (or --resume to continue a run)")
    if saved_path.exists():
        raise MalmError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    return config


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines the killed run wrote after the state we continue from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def start(out: Path, resume: bool, info: dist_util.DistInfo, task: Task, optimizer: torch.optim.Optimizer,
          config: ExperimentConfig, vocab: Any, steps_per_epoch: int, say: Any) -> Position:
    """A new run's files (rank 0) and position 0, or the resumed run's state restored into task and optimizer."""
    metrics_path = out / "metrics.jsonl"
    if resume and not (out / "last.state.json").exists():
        # Killed before its first resumable state was saved: starting over is the exact resume.
        say(f"resuming {out}: no resumable state saved yet, starting from step 0")
        if info.is_main:
            truncate_metrics(metrics_path, 0)
        return Position()
    if resume:
        tensors, state = ckpt.load_train_state(out)
        if state.get("param_layout") != PARAM_LAYOUT:
            raise MalmError(f"--resume: {out}/last.state.* was written by an older malm whose optimizer state does "
                            "not map onto today's shared transformer blocks; its last/best weights still load "
                            "(export, evaluate, --image-init), but the run cannot be continued exactly: start a new one")
        ckpt.restore_task(task, tensors)
        ckpt.load_optimizer_state(optimizer, tensors, state["optimizer"])
        ckpt.set_rng_state(tensors, state["rng"])
        pos = Position(state["step"], state["epoch"], state["batch_in_epoch"], state["best"])
        if state.get("steps_per_epoch") != steps_per_epoch:
            raise MalmError(f"--resume: {steps_per_epoch} steps per epoch now vs {state.get('steps_per_epoch')} "
                            "in the run (the training data changed)")
        say(f"resuming {out} at step {pos.step} (epoch {pos.epoch + 1}, batch {pos.batch})")
        if info.is_main:
            truncate_metrics(metrics_path, pos.step)
        return pos
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_run_files(out, config, vocab)
        metrics_path.write_text("")
    return Position()


def save(out: Path, info: dist_util.DistInfo, task: Task, optimizer: torch.optim.Optimizer, config: ExperimentConfig,
         pos: Position, steps_per_epoch: int, metrics: dict[str, Any] | None, with_state: bool) -> None:
    """Weights (`last`, and `best` when this epoch is it); with `with_state` also the resumable state."""
    if not info.is_main:
        return
    meta = {"step": pos.step, "epoch": pos.epoch, "batch_in_epoch": pos.batch, "config_hash": config.hash(),
            "metrics": metrics, "vocab": "vocab.json"}
    ckpt.save_weights(out, "last", task.model, meta)
    ckpt.save_heads(out, "last", task, pos.step)  # the re-ranking head of the same step (malm export --tokens)
    if pos.batch == 0 and pos.best["epoch"] == pos.epoch:
        ckpt.save_weights(out, "best", task.model, {**meta, "best_r1": pos.best["r1"]})
        ckpt.save_heads(out, "best", task, pos.step)
    if with_state:
        ckpt.save_train_state(out, task, optimizer, {"step": pos.step, "epoch": pos.epoch, "batch_in_epoch": pos.batch,
                                                      "best": pos.best, "steps_per_epoch": steps_per_epoch,
                                                      "config_hash": config.hash(), "world_size": info.world_size,
                                                      "param_layout": PARAM_LAYOUT})
