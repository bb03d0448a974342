"""The flat training loop: one process, or DDP under torchrun.

    malm train --data DATA --preset ht-tiny --out runs/ht-tiny
    torchrun --nproc_per_node 8 -m malm.training.train --data DATA --preset ht --out runs/ht
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m malm.training.train ...
    python -m malm.training.train --data DATA --preset ht-tiny --out runs/x --resume   # continue exactly

DDP is detected from RANK / WORLD_SIZE (gloo on CPU, nccl on CUDA); `train.batch_size` is the global batch,
split evenly over ranks, and embeddings are gathered with gradient so the loss sees every negative.
Rank 0 logs and writes checkpoints. Determinism: the global batch order is a function of (seed, epoch)
and each item's augmentation of (seed, epoch, item), independent of workers and world size; with the
optimizer, RNG states and position saved, `--resume` continues to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from malm._atomic import write_text_atomic
from malm.errors import MalmError
from malm.training import checkpoint as ckpt
from malm.training import distributed as dist_util
from malm.training.config import ExperimentConfig, diff_configs, load_preset, parse_overrides
from malm.training.metrics_log import MetricsLog, parse_report_to
from malm.training.task import Task

# Keys that may differ on --resume without changing the result.
RESUME_MAY_DIFFER = ("train.num_workers",)


@dataclass(frozen=True)
class TrainOptions:
    data_dir: Path  # a Recipe1M layout (or the procedural benchmark)
    out_dir: Path  # the run directory
    config: ExperimentConfig | None  # None with resume=True: use the run's config.json
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    resume: bool = False  # continue from out_dir/last.state.*
    image_init: Path | None = None  # pretrained ViT weights (.safetensors, timm / open_clip names)
    save_every: int = 0  # also save the resumable state every N steps (0: only at epoch ends)
    cache_dir: Path | None = None  # where prepare() keeps its cache (default: inside data_dir)
    stop_after_steps: int = 0  # stop after this many optimizer steps, as if killed (tests, time-boxed runs)
    progress_bar: bool = True  # rich progress bar on stderr (rank 0)
    report_to: tuple[str, ...] = ()  # also log metrics to "tensorboard" and/or "csv" (malm.training.metrics_log)
    log: Any = field(default=None, compare=False)  # callable(str) for status lines; default: stderr on rank 0


# ------------------------------------------------------------------------------------------- data order


class EpochBatchSampler(Sampler):
    """Yields (epoch, item) keys for this rank: the global batch b of an epoch is perm[b*B:(b+1)*B] of a
    permutation seeded by (seed, epoch); rank r takes its contiguous share. Incomplete batches are dropped.
    `set_epoch(epoch, start_batch)` skips the batches already done (resume mid-epoch)."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int) -> None:
        self.n, self.global_batch, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.per_rank = global_batch // world
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.per_rank
            for i in perm[start : start + self.per_rank]:
                yield self.epoch, i


class SeededItems(Dataset):
    """Runs the wrapped dataset's item with torch / numpy / random seeded by (seed, epoch, index), so an
    item's augmentation does not depend on worker, batch position or resume; global RNG states are restored."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        s = (self.seed * 1_000_003 + epoch) * 10_000_019 + i
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py)
                np.random.set_state(npy)


# ---------------------------------------------------------------------------------------------- helpers


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise MalmError(f"--device {name!r}: one of auto, cpu, cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MalmError("--device cuda: no CUDA GPU is available to torch here (use --device cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines the killed run wrote after the state we continue from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def build_datasets(prepared: Any, config: ExperimentConfig) -> tuple[Dataset, Dataset | None]:
    from malm.training.data import RecipeImageDataset

    pre = config.preprocess()
    train: Dataset = RecipeImageDataset(prepared, "train", pre, train=True)
    val: Dataset | None = RecipeImageDataset(prepared, "val", pre, train=False)
    if config.model.recipe.sentence_features == "minilm":
        from malm.training.models.minilm import with_sentence_features

        train = with_sentence_features(train, prepared, "train")
        val = with_sentence_features(val, prepared, "val")
    if len(val) < 2:  # type: ignore[arg-type]
        val = None
    return train, val


def validate(model: Any, val: Dataset, config: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    from torch.utils.data import Subset

    from malm.training.embed import embed_pairs
    from malm.training.evaluate import retrieval_metrics

    n = len(val)  # type: ignore[arg-type]
    size = min(config.train.eval_size, n)
    # A fixed subset (seeded), the same every epoch, so R@1 values are comparable across epochs.
    chosen = np.sort(np.random.default_rng(config.train.seed).choice(n, size=size, replace=False))
    img, rec, _ = embed_pairs(model, Subset(val, chosen.tolist()), device, amp=config.train.amp)
    metrics = retrieval_metrics(img, rec, sizes=[size], protocol="ht", seed=0)
    key = next(iter(metrics["im2recipe"]))
    return {"size": size, "key": key, "im2recipe": metrics["im2recipe"][key], "recipe2im": metrics["recipe2im"][key]}


# ------------------------------------------------------------------------------------------------- loop


def run(opts: TrainOptions) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary (steps, time, best validation metrics) on every rank."""
    info = dist_util.detect()
    device = resolve_device(opts.device, info.local_rank)
    dist_util.init(info, device)
    try:
        return _run(opts, info, device)
    finally:
        dist_util.shutdown()


def _resolve_config(opts: TrainOptions) -> ExperimentConfig:
    saved_path = opts.out_dir / "config.json"
    if opts.resume:
        if not (opts.out_dir / "last.state.json").exists():
            raise MalmError(f"--resume: {opts.out_dir} has no last.state.json to resume from")
        saved = ckpt.read_config(opts.out_dir)
        if opts.config is None:
            return saved
        differ = [k for k in diff_configs(saved.to_dict(), opts.config.to_dict()) if k not in RESUME_MAY_DIFFER]
        if differ:
            raise MalmError(f"--resume: the config differs from the run's config.json in {', '.join(differ)}; "
                            "resume with the same settings (or omit --preset/--set to use the saved config)")
        return opts.config
    if opts.config is None:
        raise MalmError("no config: pass --preset (or --resume to continue a run)")
    if saved_path.exists():
        raise MalmError(f"{opts.out_dir} already holds a run; pass --resume to continue it or choose another --out")
    return opts.config


def _run(opts: TrainOptions, info: dist_util.DistInfo, device: torch.device) -> dict[str, Any]:
    from malm.training.data import prepare

    say = opts.log or (_stderr if info.is_main else (lambda _m: None))
    config = _resolve_config(opts)
    tc = config.train
    if tc.batch_size % info.world_size:
        raise MalmError(f"train.batch_size {tc.batch_size} is not divisible by the {info.world_size} ranks")
    if device.type == "cpu" and info.enabled:
        # Ranks on one CPU share its cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))))

    # Rank 0 builds the data cache; the others then reuse it.
    def _prepare() -> Any:
        return prepare(opts.data_dir, cache_dir=opts.cache_dir, min_freq=config.data.min_freq,
                       limits=config.data.limits(), log=say)
    if info.is_main:
        prepared = _prepare()
        dist_util.barrier()
    else:
        dist_util.barrier()
        prepared = _prepare()
    train_set, val_set = build_datasets(prepared, config)
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train < tc.batch_size:
        raise MalmError(f"{opts.data_dir}: {n_train} training pairs (recipes with images) is fewer than "
                        f"train.batch_size {tc.batch_size}; use --batch-size {max(2, n_train)} or more data")

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    task = Task(config, vocab_size=len(prepared.vocab))
    if opts.image_init is not None and not opts.resume:
        from malm.training.models.init_weights import load_image_init

        report = load_image_init(task.model.image_encoder, opts.image_init)
        say(f"image init from {opts.image_init}: {report.summary()}")
    task.to(device)
    optimizer = torch.optim.AdamW(task.param_groups(tc), lr=tc.lr, betas=(0.9, 0.999))

    sampler = EpochBatchSampler(n_train, tc.batch_size, info.rank, info.world_size, tc.seed)
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = tc.epochs * steps_per_epoch
    step, start_epoch, start_batch = 0, 0, 0
    best: dict[str, Any] = {"r1": -1.0, "epoch": -1, "metrics": None}
    out = opts.out_dir
    metrics_path = out / "metrics.jsonl"

    if opts.resume:
        tensors, state = ckpt.load_train_state(out)
        ckpt.restore_task(task, tensors)
        ckpt.load_optimizer_state(optimizer, tensors, state["optimizer"])
        ckpt.set_rng_state(tensors, state["rng"])
        step, start_epoch, start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
        best = state["best"]
        if state.get("steps_per_epoch") != steps_per_epoch:
            raise MalmError(f"--resume: {steps_per_epoch} steps per epoch now vs {state.get('steps_per_epoch')} "
                            "in the run (the training data changed)")
        say(f"resuming {out} at step {step} (epoch {start_epoch + 1}, batch {start_batch})")
        if info.is_main:
            _truncate_metrics(metrics_path, step)
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_run_files(out, config, prepared.vocab)
        metrics_path.write_text("")
    dist_util.barrier()
    mlog = MetricsLog(out, opts.report_to, resume_step=step if opts.resume else None, enabled=info.is_main)

    model_ddp: torch.nn.Module = task
    if info.enabled:
        # find_unused_parameters: objectives may leave some parameters out of a step (e.g. the mask token).
        model_ddp = torch.nn.parallel.DistributedDataParallel(
            task, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    loader = DataLoader(SeededItems(train_set, tc.seed), batch_size=sampler.per_rank, sampler=sampler,
                        num_workers=tc.num_workers, drop_last=True, pin_memory=device.type == "cuda",
                        # Its own generator: creating an iterator must not consume the global RNG.
                        generator=torch.Generator().manual_seed(tc.seed), persistent_workers=False)
    amp = tc.amp and device.type == "cuda"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    say(f"training {config.name}: {n_train} pairs, {steps_per_epoch} steps/epoch × {tc.epochs} epochs, "
        f"global batch {tc.batch_size} on {info.world_size} × {device.type}"
        + (", bf16" if amp else ""))

    bar = _Progress(enabled=opts.progress_bar and info.is_main, total=total_steps, done=step)
    started = time.perf_counter()
    window: dict[str, float] = {}
    window_n, window_t = 0, time.perf_counter()
    stopped = False
    try:
        for epoch in range(start_epoch, tc.epochs):
            batch_in_epoch = start_batch if epoch == start_epoch else 0
            sampler.set_epoch(epoch, batch_in_epoch)
            image_frozen = epoch < tc.freeze_image_epochs
            task.train()
            for batch in loader:
                factor = tc.lr_factor(step, total_steps)
                for g in optimizer.param_groups:
                    g["lr"] = 0.0 if (image_frozen and g["kind"] == "image") else g["base_lr"] * factor
                batch = to_device(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    losses, report = model_ddp(batch, step / max(1, total_steps))
                total = Task.total(losses)
                if not torch.isfinite(total):
                    raise MalmError(f"loss became {float(total)} at step {step}: lower train.lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tc.grad_clip > 0:
                    report["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
                optimizer.step()
                task.after_step()
                step += 1
                batch_in_epoch += 1
                report["loss"] = float(total.detach())
                for k, v in report.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                bar.update(step, report["loss"], tc.batch_size * window_n / max(1e-9, time.perf_counter() - window_t))
                if info.is_main and (step % tc.log_every == 0 or step == total_steps):
                    now = time.perf_counter()
                    rec = {"type": "train", "step": step, "epoch": epoch + step_frac(batch_in_epoch, steps_per_epoch),
                           "lr": optimizer.param_groups[-1]["lr"],
                           "samples_per_s": round(tc.batch_size * window_n / max(1e-9, now - window_t), 2)}
                    rec |= {k: round(v / window_n, 6) for k, v in window.items()}
                    mlog.write(rec)
                    window, window_n, window_t = {}, 0, now
                mid_epoch_save = opts.save_every and step % opts.save_every == 0 and batch_in_epoch < steps_per_epoch
                if mid_epoch_save:
                    _save(out, info, task, optimizer, config, step, epoch, batch_in_epoch, best, steps_per_epoch, None)
                if opts.stop_after_steps and step >= opts.stop_after_steps:
                    stopped = True
                    break
            if stopped:
                break
            # End of epoch: validate on rank 0, update best, save last (+ best) and the resumable state.
            metrics = None
            if val_set is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
                if info.is_main:
                    metrics = validate(task.model, val_set, config, device)
                    say(f"epoch {epoch + 1}/{tc.epochs}: val {metrics['key']} image→recipe "
                        f"R@1 {metrics['im2recipe']['R@1']:.3f} medR {metrics['im2recipe']['medR']:.1f}")
                    mlog.write({"type": "val", "step": step, "epoch": epoch + 1, **metrics})
                    if metrics["im2recipe"]["R@1"] > best["r1"]:
                        best = {"r1": metrics["im2recipe"]["R@1"], "epoch": epoch + 1, "metrics": metrics}
            elif val_set is None and info.is_main:
                best = {"r1": -1.0, "epoch": epoch + 1, "metrics": None}  # no validation pairs: best = last
            _save(out, info, task, optimizer, config, step, epoch + 1, 0, best, steps_per_epoch, metrics)
            dist_util.barrier()
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    summary = {"steps": step, "epochs_done": step / max(1, steps_per_epoch), "seconds": round(elapsed, 2),
               "stopped_early": stopped, "best": best, "run_dir": str(out)}
    if info.is_main and not stopped:
        mlog.write({"type": "done", "step": step, "seconds": round(elapsed, 2), "best": best})
    mlog.close()
    return summary


def step_frac(batch_in_epoch: int, steps_per_epoch: int) -> float:
    return round(batch_in_epoch / max(1, steps_per_epoch), 4)


def _save(out: Path, info: dist_util.DistInfo, task: Task, optimizer: torch.optim.Optimizer,
          config: ExperimentConfig, step: int, epoch: int, batch_in_epoch: int, best: dict[str, Any],
          steps_per_epoch: int, metrics: dict[str, Any] | None) -> None:
    if not info.is_main:
        return
    meta = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "config_hash": config.hash(),
            "metrics": metrics, "vocab": "vocab.json"}
    ckpt.save_weights(out, "last", task.model, meta)
    if batch_in_epoch == 0 and best["epoch"] == epoch:
        ckpt.save_weights(out, "best", task.model, {**meta, "best_r1": best["r1"]})
    ckpt.save_train_state(out, task, optimizer, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                                  "best": best, "steps_per_epoch": steps_per_epoch,
                                                  "config_hash": config.hash(), "world_size": info.world_size})


class _Progress:
    """The training bar (malm.progress) with loss and samples/s; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        from contextlib import ExitStack

        from malm.progress import progress

        self._stack = ExitStack()
        self.bar = self._stack.enter_context(progress(
            "train", total=total, enabled=enabled, completed=done, fields={"loss": math.nan, "speed": 0.0},
            fmt="loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} samples/s", transient=False))

    def update(self, step: int, loss: float, speed: float) -> None:
        self.bar.update(completed=step, loss=loss, speed=speed)

    def close(self) -> None:
        self._stack.close()


# ------------------------------------------------------------------------------------------- torchrun entry


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """CLI flags -> TrainOptions (the namespace never goes deeper than this)."""
    config: ExperimentConfig | None = None
    overrides = parse_overrides(list(args.set or []))
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.batch_size is not None:
        overrides["train.batch_size"] = args.batch_size
    if args.eval_size is not None:
        overrides["train.eval_size"] = args.eval_size
    if args.preset is not None:
        config = load_preset(args.preset).with_overrides(overrides)
    elif args.resume:
        if overrides:
            config = ckpt.read_config(args.out).with_overrides(overrides)
    else:
        raise MalmError("--preset is required (or --resume to continue a run)")
    return TrainOptions(data_dir=Path(args.data), out_dir=Path(args.out), config=config, device=args.device,
                        resume=args.resume, image_init=Path(args.image_init) if args.image_init else None,
                        save_every=args.save_every, cache_dir=Path(args.cache) if args.cache else None,
                        stop_after_steps=args.stop_after_steps, progress_bar=not args.no_progress,
                        report_to=parse_report_to(getattr(args, "report_to", None)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m malm.training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Recipe1M folder (layer1.json, layer2.json, images/)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", help="preset name (ht, ht-tiny, …) or a config .json")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--eval-size", type=int, help="validation pairs for image→recipe R@1 (default 1000)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--image-init", help="pretrained ViT weights (.safetensors, timm or open_clip names)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=3e-4")
    p.add_argument("--save-every", type=int, default=0, help="also save the resumable state every N steps")
    p.add_argument("--cache", help="data cache folder (default: DATA/.malm_cache)")
    p.add_argument("--stop-after-steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report-to", action="append", metavar="tensorboard|csv",
                   help="also log metrics to TensorBoard (RUN/tensorboard) and/or RUN/metrics.csv")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(options_from_args(args))
    except MalmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dist_util.detect().is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
