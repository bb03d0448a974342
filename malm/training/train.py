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

Speed (the GPU should never wait): photos come from a uint8 cache decoded once (`data/image_cache.py`);
workers only slice a crop, and flip + normalisation run on the batch's device (`device_transform`);
workers persist across epochs; `train_step` reads nothing back from the device, losses and grad norms
are summed there and read every `train.log_every` steps (`Window`); AdamW is fused on CUDA; every
attention is SDPA; `train.compile` compiles the image encoder; validation runs every `train.eval_every`
epochs and the resumable state is saved every `train.state_every` epochs (and at the last). Each log line
says how much of its time the loop waited for data, and an `epoch_end` line what the epoch's end cost.
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
from malm.evaluation import retrieval_metrics
from malm.metrics_log import MetricsLog, parse_report_to
from malm.progress import progress
from malm.training import checkpoint as ckpt
from malm.training import distributed as dist_util
from malm.training.config import ExperimentConfig, diff_configs, load_preset, parse_overrides
from malm.training.data import RecipeImageDataset, prepare
from malm.training.data.dataset import RecipeOnlyBatches, device_transform
from malm.training.data.families import split_families
from malm.training.data.image_cache import prepare_images
from malm.training.data.stem_cache import prepare_stem_features
from malm.training.embed import embed_pairs, to_device
from malm.training.models.hybrid import HybridViT, load_stem_weights
from malm.training.models.init_weights import load_image_init
from malm.training.models.minilm import with_sentence_features
from malm.training.task import Task

# Keys that may differ on --resume without changing the result.
RESUME_MAY_DIFFER = ("train.num_workers",)
# The order of parameters the optimizer state is saved in; states from before the shared transformer
# block (separate q/k/v projections) cannot be mapped onto today's parameters.
PARAM_LAYOUT = "shared-block-1"


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
    report_to: tuple[str, ...] = ()  # also log metrics to "tensorboard" and/or "csv" (malm.metrics_log)
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
            # The CPU generator only (what items draw from): torch.manual_seed would also queue a seed for
            # every lazy accelerator backend, with a stack trace each, costing more than the item itself.
            torch.default_generator.manual_seed(s)
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


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines the killed run wrote after the state we continue from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def build_datasets(prepared: Any, config: ExperimentConfig, images: Any = None) -> tuple[Dataset, Dataset | None]:
    """Train and val datasets; with `images` (an `image_cache.ImageCache`) photos come from the uint8 cache."""
    pre = config.preprocess()
    split_images = (lambda name: images.split(name)) if images is not None else (lambda name: None)
    families = None
    if config.loss.matching.enabled and config.loss.matching.mode == "itm":
        # Hard negatives must not be near-duplicates of the positive: the benchmark's families, when known.
        families = split_families(prepared, "train")
    train: Dataset = RecipeImageDataset(prepared, "train", pre, train=True, images=split_images("train"),
                                        families=families)
    val: Dataset | None = RecipeImageDataset(prepared, "val", pre, train=False, images=split_images("val"))
    if config.model.recipe.sentence_features == "minilm":
        train = with_sentence_features(train, prepared, "train")
        val = with_sentence_features(val, prepared, "val")
    if len(val) < 2:  # type: ignore[arg-type]
        val = None
    return train, val


def validate(model: Any, val: Dataset, config: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    from torch.utils.data import Subset

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
        if not (opts.out_dir / "last.state.json").exists() and not saved_path.exists():
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


def _load_data(opts: TrainOptions, config: ExperimentConfig, info: dist_util.DistInfo,
               say: Any) -> tuple[Any, Dataset, Dataset | None]:
    """The prepared recipes (and, with train.image_cache, the uint8 photo cache) and the two datasets.
    Rank 0 builds the caches; the others then reuse them."""
    def _prepare() -> tuple[Any, Any]:
        prepared = prepare(opts.data_dir, cache_dir=opts.cache_dir, min_freq=config.data.min_freq,
                           limits=config.data.limits(), log=say)
        images = None
        if config.train.image_cache:
            images = prepare_images(prepared, config.preprocess(), log=say)
        return prepared, images

    if info.is_main:
        prepared, images = _prepare()
        dist_util.barrier()
    else:
        dist_util.barrier()
        prepared, images = _prepare()
    train_set, val_set = build_datasets(prepared, config, images)
    return prepared, train_set, val_set


def _use_stem_cache(task: Task, train_set: Dataset, prepared: Any, config: ExperimentConfig,
                    info: dist_util.DistInfo, say: Any) -> bool:
    """With a frozen hybrid stem and the image cache: training items become crops of the stem's feature maps,
    computed once (`data/stem_cache.py`); rank 0 builds them, the others then reuse them. The maps are keyed
    by the stem's weights, so a resumed run finds the same ones."""
    encoder = task.model.image_encoder
    base = getattr(train_set, "dataset", train_set)  # under a sentence-feature wrapper
    if not (config.train.stem_cache and isinstance(encoder, HybridViT) and config.model.image.freeze_stem
            and getattr(base, "images", None) is not None):
        return False

    def build() -> Any:
        return prepare_stem_features(base.images, encoder.patch_embed, config.preprocess(), prepared.cache_dir,
                                     log=say)

    if info.is_main:
        feats = build()
        dist_util.barrier()
    else:
        dist_util.barrier()
        feats = build()
    base.use_stem_features(feats)
    return True


def _recipe_only(prepared: Any, config: ExperimentConfig, say: Any) -> Any:
    """The image-less training recipes for `train.recipe_only_batch`, or None when off or there are none."""
    tc = config.train
    if tc.recipe_only_batch <= 0:
        return None
    if config.loss.recipe_ssl_weight <= 0:
        raise MalmError("train.recipe_only_batch feeds the recipe self-supervision only; loss.recipe_ssl_weight is 0")
    if config.model.recipe.sentence_features != "learned":
        raise MalmError("train.recipe_only_batch needs model.recipe.sentence_features 'learned' (recipe-only "
                        "batches carry token ids, not MiniLM sentence vectors)")

    pool = RecipeOnlyBatches(prepared, "train")
    say(f"recipe-only batches: {tc.recipe_only_batch} per step from {len(pool)} training recipes without photos")
    return pool if len(pool) else None


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


def _run(opts: TrainOptions, info: dist_util.DistInfo, device: torch.device) -> dict[str, Any]:
    say = opts.log or (_stderr if info.is_main else (lambda _m: None))
    config = _resolve_config(opts)
    tc = config.train
    if tc.batch_size % info.world_size:
        raise MalmError(f"train.batch_size {tc.batch_size} is not divisible by the {info.world_size} ranks")
    if device.type == "cpu" and info.enabled:
        # Ranks on one CPU share its cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))))

    prepared, train_set, val_set = _load_data(opts, config, info, say)
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train < tc.batch_size:
        raise MalmError(f"{opts.data_dir}: {n_train} training pairs (recipes with images) is fewer than "
                        f"train.batch_size {tc.batch_size}; use --batch-size {max(2, n_train)} or more data")

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    task = Task(config, vocab_size=len(prepared.vocab))
    if opts.image_init is not None and not opts.resume:
        report = load_image_init(task.model.image_encoder, opts.image_init)
        say(f"image init from {opts.image_init}: {report.summary()}")
    if config.model.image.backbone != "vit" and not opts.resume:
        n = load_stem_weights(task.model.image_encoder)
        say(f"image stem: ImageNet EfficientNet-Lite0, {config.model.image.stem_stages} stages ({n} tensors"
            f"{', frozen' if config.model.image.freeze_stem else ''})")
    task.to(device)
    optimizer = build_optimizer(task, tc, device)

    sampler = EpochBatchSampler(n_train, tc.batch_size, info.rank, info.world_size, tc.seed)
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = tc.epochs * steps_per_epoch
    step, start_epoch, start_batch = 0, 0, 0
    best: dict[str, Any] = {"r1": -1.0, "epoch": -1, "metrics": None}
    out = opts.out_dir
    metrics_path = out / "metrics.jsonl"

    if opts.resume and not (out / "last.state.json").exists():
        # Killed before its first resumable state was saved: starting over is the exact resume.
        say(f"resuming {out}: no resumable state saved yet, starting from step 0")
        if info.is_main:
            _truncate_metrics(metrics_path, 0)
    elif opts.resume:
        tensors, state = ckpt.load_train_state(out)
        if state.get("param_layout") != PARAM_LAYOUT:
            raise MalmError(f"--resume: {out}/last.state.* was written by an older malm whose optimizer state does "
                            "not map onto today's shared transformer blocks; its last/best weights still load "
                            "(export, evaluate, --image-init), but the run cannot be continued exactly: start a new one")
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

    if tc.compile:
        # In place (nn.Module.compile): parameter names, and so checkpoints, are unchanged.
        task.model.image_encoder.compile()
    model_ddp: torch.nn.Module = task
    if info.enabled:
        # find_unused_parameters: objectives may leave some parameters out of a step (e.g. the mask token).
        model_ddp = torch.nn.parallel.DistributedDataParallel(
            task, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    stem_cached = _use_stem_cache(task, train_set, prepared, config, info, say)
    workers = tc.num_workers
    loader = DataLoader(SeededItems(train_set, tc.seed), batch_size=sampler.per_rank, sampler=sampler,
                        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                        # Its own generator: creating an iterator must not consume the global RNG.
                        generator=torch.Generator().manual_seed(tc.seed),
                        # Workers live across epochs: no restart stall at each epoch's start.
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    recipe_only = _recipe_only(prepared, config, say)
    amp = tc.amp and device.type == "cuda"
    pre = config.preprocess()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    say(f"training {config.name}: {n_train} pairs, {steps_per_epoch} steps/epoch × {tc.epochs} epochs, "
        f"global batch {tc.batch_size} on {info.world_size} × {device.type}"
        + (", bf16" if amp else "") + (", image cache" if tc.image_cache else "")
        + (", stem features cached" if stem_cached else ""))

    bar = _Progress(enabled=opts.progress_bar and info.is_main, total=total_steps, done=step)
    started = time.perf_counter()
    window = Window(device)
    stopped = False
    try:
        for epoch in range(start_epoch, tc.epochs):
            batch_in_epoch = start_batch if epoch == start_epoch else 0
            sampler.set_epoch(epoch, batch_in_epoch)
            image_frozen = epoch < tc.freeze_image_epochs
            task.train()
            for batch in window.timed(loader):
                task.seed_step(step, info.rank)  # masks / hard negatives: per rank, reproducible on resume
                if recipe_only is not None:
                    batch = batch | recipe_only.batch(max(1, tc.recipe_only_batch // info.world_size), task.generator)
                total, report = train_step(model_ddp, task, optimizer, params, batch, pre,
                                           tc.lr_factor(step, total_steps), image_frozen, step / max(1, total_steps),
                                           amp, tc.grad_clip, device)
                window.add(report, total, step)
                step += 1
                batch_in_epoch += 1
                if step % tc.log_every == 0 or step == total_steps:
                    means, seconds, n = window.read()
                    speed = tc.batch_size * n / max(1e-9, seconds)
                    bar.update(step, means["loss"], speed)
                    if info.is_main:
                        rec = {"type": "train", "step": step, "epoch": epoch + step_frac(batch_in_epoch, steps_per_epoch),
                               "lr": optimizer.param_groups[-1]["lr"], "samples_per_s": round(speed, 2),
                               "data_wait_share": round(window.last_wait / max(1e-9, seconds), 4)}
                        if device.type == "cuda":
                            rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                        mlog.write(rec | {k: round(v, 6) for k, v in means.items()})
                else:
                    bar.update(step)
                mid_epoch_save = opts.save_every and step % opts.save_every == 0 and batch_in_epoch < steps_per_epoch
                if mid_epoch_save:
                    window.check()
                    _save(out, info, task, optimizer, config, step, epoch, batch_in_epoch, best, steps_per_epoch,
                          None, with_state=True)
                if opts.stop_after_steps and step >= opts.stop_after_steps:
                    stopped = True
                    break
            if stopped:
                break
            window.check()
            ended = time.perf_counter()
            best, metrics = _end_of_epoch(task, val_set, config, device, info, epoch, step, best, mlog, say)
            last = epoch + 1 == tc.epochs
            _save(out, info, task, optimizer, config, step, epoch + 1, 0, best, steps_per_epoch, metrics,
                  with_state=last or (epoch + 1) % tc.state_every == 0)
            dist_util.barrier()
            if info.is_main:  # what the epoch's end cost the step loop (validation, saving)
                mlog.write({"type": "epoch_end", "step": step, "epoch": epoch + 1,
                                             "seconds": round(time.perf_counter() - ended, 3)})
            window.t = time.perf_counter()  # the next window's speed counts steps, not the epoch's end
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    summary = {"steps": step, "epochs_done": step / max(1, steps_per_epoch), "seconds": round(elapsed, 2),
               "stopped_early": stopped, "best": best, "run_dir": str(out)}
    if info.is_main and not stopped:
        mlog.write({"type": "done", "step": step, "seconds": round(elapsed, 2), "best": best})
    mlog.close()
    return summary


def _end_of_epoch(task: Task, val_set: Dataset | None, config: ExperimentConfig, device: torch.device,
                  info: dist_util.DistInfo, epoch: int, step: int, best: dict[str, Any], mlog: MetricsLog,
                  say: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validate on rank 0 every `train.eval_every` epochs (and after the last); returns (best, metrics)."""
    tc = config.train
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
    return best, metrics


def step_frac(batch_in_epoch: int, steps_per_epoch: int) -> float:
    return round(batch_in_epoch / max(1, steps_per_epoch), 4)


def _save(out: Path, info: dist_util.DistInfo, task: Task, optimizer: torch.optim.Optimizer,
          config: ExperimentConfig, step: int, epoch: int, batch_in_epoch: int, best: dict[str, Any],
          steps_per_epoch: int, metrics: dict[str, Any] | None, with_state: bool) -> None:
    """Weights (`last`, and `best` when this epoch is it); with `with_state` also the resumable state —
    `--resume` continues from the newest state, re-running the epochs after it, so saving it every
    `train.state_every` epochs keeps the exact-resume guarantee."""
    if not info.is_main:
        return
    meta = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "config_hash": config.hash(),
            "metrics": metrics, "vocab": "vocab.json"}
    ckpt.save_weights(out, "last", task.model, meta)
    if batch_in_epoch == 0 and best["epoch"] == epoch:
        ckpt.save_weights(out, "best", task.model, {**meta, "best_r1": best["r1"]})
    if with_state:
        ckpt.save_train_state(out, task, optimizer, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                                      "best": best, "steps_per_epoch": steps_per_epoch,
                                                      "config_hash": config.hash(), "world_size": info.world_size,
                                                      "param_layout": PARAM_LAYOUT})


class _Progress:
    """The training bar (malm.progress) with loss and samples/s; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        from contextlib import ExitStack


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


def build_parser(prog: str = "python -m malm.training.train") -> argparse.ArgumentParser:
    """The one parser of training: `malm train` hands its arguments here too (no second list to keep in sync)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Recipe1M folder (layer1.json, layer2.json, images/)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", help="preset name (ht, ht-tiny, tnlbt, tnlbt-tiny, malm, malm-tiny) or a config .json")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--batch-size", type=int, help="global batch size (override train.batch_size)")
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
    p.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout (rank 0)")
    return p


def cli(argv: list[str] | None = None, prog: str = "malm train") -> dict[str, Any]:
    """Parse, train, report: the body of both doors. Raises MalmError for the caller to show."""
    args = build_parser(prog).parse_args(argv)
    summary = run(options_from_args(args))
    if not dist_util.detect().is_main:
        return summary
    if args.json or prog != "malm train":  # torchrun / python -m always printed the JSON summary
        print(json.dumps(summary), flush=True)
    else:
        best = summary["best"]
        r1 = f"{best['r1']:.2f}" if best.get("metrics") else "n/a"
        _stderr(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s; best epoch {best['epoch']} "
                f"val image→recipe R@1 {r1}; run in {summary['run_dir']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """The torchrun / `python -m malm.training.train` door: errors print one line and exit 2."""
    try:
        cli(argv, prog="python -m malm.training.train")
    except MalmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
