"""The flat training loop: one process, or DDP under torchrun. Its one door is `malm train`
(malm/commands/train.py), which torchrun starts as `-m malm`:

    malm train --data DATA --preset ht-tiny --out runs/ht-tiny
    malm train --data DATA --preset ht-tiny --out runs/x --resume      # continue exactly
    torchrun --nproc_per_node 8 -m malm train --data DATA --preset ht --out runs/ht --json
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m malm train ...

DDP is detected from RANK / WORLD_SIZE (gloo on CPU, nccl on CUDA); `train.batch_size` is the global batch,
split evenly over ranks, and embeddings are gathered with gradient so the loss sees every negative.
Rank 0 logs and writes checkpoints. Determinism: the global batch order is a function of (seed, epoch)
and each item's augmentation of (seed, epoch, item), independent of workers and world size
(`data/order.py`); with the optimizer, RNG states and position saved (`run_state.py`), `--resume` continues
to the same weights as an uninterrupted run.

Speed (the GPU should never wait): photos come from a uint8 cache decoded once (`data/image_cache.py`);
workers only slice a crop, and flip + normalisation run on the batch's device (`device_transform`);
workers persist across epochs; `train_step` (`step.py`) reads nothing back from the device, losses and grad
norms are summed there and read every `train.log_every` steps (`Window`); AdamW is fused on CUDA; every
attention is SDPA; `train.compile` compiles the image encoder; validation runs every `train.eval_every`
epochs and the resumable state is saved every `train.state_every` epochs (and at the last). Each log line
says how much of its time the loop waited for data, and an `epoch_end` line what the epoch's end cost.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from malm.errors import MalmError
from malm.evaluation import retrieval_metrics
from malm.metrics_log import MetricsLog
from malm.training import distributed as dist_util
from malm.training import run_state
from malm.training.config import ExperimentConfig
from malm.training.data import RecipeImageDataset, prepare
from malm.training.data.dataset import RecipeOnlyBatches
from malm.training.data.families import split_families
from malm.training.data.image_cache import prepare_images
from malm.training.data.order import EpochBatchSampler, SeededItems
from malm.training.data.stem_cache import prepare_stem_features
from malm.training.embed import embed_pairs, to_device
from malm.training.models.hybrid import HybridViT, load_stem_weights
from malm.training.models.init_weights import load_image_init
from malm.training.models.minilm import with_sentence_features
from malm.training.run_state import Position
from malm.training.step import TrainProgress, Window, build_optimizer, step_frac, train_step
from malm.training.task import Task

# Re-exported: the data order and the step are part of what "the trainer" offers to benchmarks and tests.
__all__ = ["EpochBatchSampler", "SeededItems", "TrainOptions", "Window", "build_datasets", "build_optimizer",
           "resolve_device", "run", "to_device", "train_step", "validate"]


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


@dataclass
class _Loop:
    """What the step loop works with, built once by `_run`."""

    opts: TrainOptions
    info: dist_util.DistInfo
    device: torch.device
    config: ExperimentConfig
    task: Task
    optimizer: torch.optim.Optimizer
    model_ddp: torch.nn.Module  # the task, DDP-wrapped under torchrun
    sampler: EpochBatchSampler
    val_set: Dataset | None
    mlog: MetricsLog
    say: Any
    loader: Any = None
    recipe_only: Any = None  # image-less recipes for train.recipe_only_batch, or None
    params: list[Any] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.steps_per_epoch

    @property
    def amp(self) -> bool:
        return self.config.train.amp and self.device.type == "cuda"


def _run(opts: TrainOptions, info: dist_util.DistInfo, device: torch.device) -> dict[str, Any]:
    say = opts.log or (_stderr if info.is_main else (lambda _m: None))
    config = run_state.resolve_config(opts.out_dir, opts.config, opts.resume)
    tc = config.train
    _check_ranks(config, info, device)
    prepared, train_set, val_set = _load_data(opts, config, info, say)
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train < tc.batch_size:
        raise MalmError(f"{opts.data_dir}: {n_train} training pairs (recipes with images) is fewer than "
                        f"train.batch_size {tc.batch_size}; use --batch-size {max(2, n_train)} or more data")
    task = _build_task(opts, config, len(prepared.vocab), say)
    task.to(device)
    optimizer = build_optimizer(task, tc, device)
    sampler = EpochBatchSampler(n_train, tc.batch_size, info.rank, info.world_size, tc.seed)
    pos = run_state.start(opts.out_dir, opts.resume, info, task, optimizer, config, prepared.vocab,
                          sampler.batches_per_epoch, say)
    dist_util.barrier()
    mlog = MetricsLog(opts.out_dir, opts.report_to, resume_step=pos.step if opts.resume else None,
                      enabled=info.is_main)
    loop = _Loop(opts, info, device, config, task, optimizer, _wrap(task, config, info, device), sampler, val_set,
                 mlog, say)
    stem_cached = _use_stem_cache(task, train_set, prepared, config, info, say)
    loop.loader = _loader(train_set, sampler, config, device)
    loop.recipe_only = _recipe_only(prepared, config, say)
    loop.params = [p for g in optimizer.param_groups for p in g["params"]]
    say(f"training {config.name}: {n_train} pairs, {loop.steps_per_epoch} steps/epoch × {tc.epochs} epochs, "
        f"global batch {tc.batch_size} on {info.world_size} × {device.type}"
        + (", bf16" if loop.amp else "") + (", image cache" if tc.image_cache else "")
        + (", stem features cached" if stem_cached else ""))
    started = time.perf_counter()
    stopped = _train(loop, pos)
    elapsed = time.perf_counter() - started
    summary = {"steps": pos.step, "epochs_done": pos.step / max(1, loop.steps_per_epoch),
               "seconds": round(elapsed, 2), "stopped_early": stopped, "best": pos.best, "run_dir": str(opts.out_dir)}
    if info.is_main and not stopped:
        mlog.write({"type": "done", "step": pos.step, "seconds": round(elapsed, 2), "best": pos.best})
    mlog.close()
    return summary


def _check_ranks(config: ExperimentConfig, info: dist_util.DistInfo, device: torch.device) -> None:
    if config.train.batch_size % info.world_size:
        raise MalmError(f"train.batch_size {config.train.batch_size} is not divisible by the {info.world_size} ranks")
    if device.type == "cpu" and info.enabled:
        # Ranks on one CPU share its cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))))


def _build_task(opts: TrainOptions, config: ExperimentConfig, vocab_size: int, say: Any) -> Task:
    """The task from the seeded RNGs, with pretrained image weights (`--image-init`, a hybrid's ImageNet stem)
    in a new run; a resumed run gets its own weights back from the state."""
    tc = config.train
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    task = Task(config, vocab_size=vocab_size)
    if opts.image_init is not None and not opts.resume:
        report = load_image_init(task.model.image_encoder, opts.image_init)
        say(f"image init from {opts.image_init}: {report.summary()}")
    if config.model.image.backbone != "vit" and not opts.resume:
        n = load_stem_weights(task.model.image_encoder)
        say(f"image stem: ImageNet EfficientNet-Lite0, {config.model.image.stem_stages} stages ({n} tensors"
            f"{', frozen' if config.model.image.freeze_stem else ''})")
    return task


def _wrap(task: Task, config: ExperimentConfig, info: dist_util.DistInfo, device: torch.device) -> torch.nn.Module:
    """The module the step calls: the task, its image encoder compiled (`train.compile`), DDP under torchrun."""
    if config.train.compile:
        # In place (nn.Module.compile): parameter names, and so checkpoints, are unchanged.
        task.model.image_encoder.compile()
    if not info.enabled:
        return task
    # find_unused_parameters: objectives may leave some parameters out of a step (e.g. the mask token).
    return torch.nn.parallel.DistributedDataParallel(
        task, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)


def _loader(train_set: Dataset, sampler: EpochBatchSampler, config: ExperimentConfig, device: torch.device) -> DataLoader:
    tc = config.train
    workers = tc.num_workers
    return DataLoader(SeededItems(train_set, tc.seed), batch_size=sampler.per_rank, sampler=sampler,
                      num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                      # Its own generator: creating an iterator must not consume the global RNG.
                      generator=torch.Generator().manual_seed(tc.seed),
                      # Workers live across epochs: no restart stall at each epoch's start.
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def _train(loop: _Loop, pos: Position) -> bool:
    """The epochs from `pos` on; True when stopped early (`stop_after_steps`)."""
    bar = TrainProgress(enabled=loop.opts.progress_bar and loop.info.is_main, total=loop.total_steps, done=pos.step)
    window = Window(loop.device)
    try:
        for epoch in range(pos.epoch, loop.config.train.epochs):
            pos.epoch = epoch
            if _epoch(loop, pos, window, bar):
                return True
            _end_epoch(loop, pos, window)
            pos.batch = 0
    finally:
        bar.close()
    return False


def _epoch(loop: _Loop, pos: Position, window: Window, bar: TrainProgress) -> bool:
    """The rest of epoch `pos.epoch`, from batch `pos.batch`; True when stopped early."""
    tc, task = loop.config.train, loop.task
    loop.sampler.set_epoch(pos.epoch, pos.batch)
    image_frozen = pos.epoch < tc.freeze_image_epochs
    pre = loop.config.preprocess()
    task.train()
    for batch in window.timed(loop.loader):
        task.seed_step(pos.step, loop.info.rank)  # masks / hard negatives: per rank, reproducible on resume
        if loop.recipe_only is not None:
            batch = batch | loop.recipe_only.batch(max(1, tc.recipe_only_batch // loop.info.world_size), task.generator)
        total, report = train_step(loop.model_ddp, task, loop.optimizer, loop.params, batch, pre,
                                   tc.lr_factor(pos.step, loop.total_steps), image_frozen,
                                   pos.step / max(1, loop.total_steps), loop.amp, tc.grad_clip, loop.device)
        window.add(report, total, pos.step)
        pos.step += 1
        pos.batch += 1
        _log_step(loop, pos, window, bar)
        if loop.opts.save_every and pos.step % loop.opts.save_every == 0 and pos.batch < loop.steps_per_epoch:
            window.check()
            run_state.save(loop.opts.out_dir, loop.info, task, loop.optimizer, loop.config, pos,
                           loop.steps_per_epoch, None, with_state=True)
        if loop.opts.stop_after_steps and pos.step >= loop.opts.stop_after_steps:
            return True
    return False


def _log_step(loop: _Loop, pos: Position, window: Window, bar: TrainProgress) -> None:
    """Every `train.log_every` steps (and the last): read the window (the loop's one host sync), log it."""
    tc = loop.config.train
    if pos.step % tc.log_every != 0 and pos.step != loop.total_steps:
        bar.update(pos.step)
        return
    means, seconds, n = window.read()
    speed = tc.batch_size * n / max(1e-9, seconds)
    bar.update(pos.step, means["loss"], speed)
    if not loop.info.is_main:
        return
    rec = {"type": "train", "step": pos.step, "epoch": pos.epoch + step_frac(pos.batch, loop.steps_per_epoch),
           "lr": loop.optimizer.param_groups[-1]["lr"], "samples_per_s": round(speed, 2),
           "data_wait_share": round(window.last_wait / max(1e-9, seconds), 4)}
    if loop.device.type == "cuda":
        rec["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(loop.device) / 2**20, 1)
    loop.mlog.write(rec | {k: round(v, 6) for k, v in means.items()})


def _end_epoch(loop: _Loop, pos: Position, window: Window) -> None:
    """Validate, save (weights; the resumable state every `train.state_every` epochs and at the last)."""
    tc, info = loop.config.train, loop.info
    window.check()
    ended = time.perf_counter()
    metrics = _validate_epoch(loop, pos)
    done = Position(pos.step, pos.epoch + 1, 0, pos.best)
    last = done.epoch == tc.epochs
    run_state.save(loop.opts.out_dir, info, loop.task, loop.optimizer, loop.config, done, loop.steps_per_epoch,
                   metrics, with_state=last or done.epoch % tc.state_every == 0)
    dist_util.barrier()
    if info.is_main:  # what the epoch's end cost the step loop (validation, saving)
        loop.mlog.write({"type": "epoch_end", "step": pos.step, "epoch": done.epoch,
                         "seconds": round(time.perf_counter() - ended, 3)})
    window.t = time.perf_counter()  # the next window's speed counts steps, not the epoch's end


def _validate_epoch(loop: _Loop, pos: Position) -> dict[str, Any] | None:
    """Validate on rank 0 every `train.eval_every` epochs (and after the last), updating `pos.best`."""
    tc, epoch = loop.config.train, pos.epoch
    metrics = None
    if loop.val_set is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
        if loop.info.is_main:
            metrics = validate(loop.task.model, loop.val_set, loop.config, loop.device)
            loop.say(f"epoch {epoch + 1}/{tc.epochs}: val {metrics['key']} image→recipe "
                     f"R@1 {metrics['im2recipe']['R@1']:.3f} medR {metrics['im2recipe']['medR']:.1f}")
            loop.mlog.write({"type": "val", "step": pos.step, "epoch": epoch + 1, **metrics})
            if metrics["im2recipe"]["R@1"] > pos.best["r1"]:
                pos.best = {"r1": metrics["im2recipe"]["R@1"], "epoch": epoch + 1, "metrics": metrics}
    elif loop.val_set is None and loop.info.is_main:
        pos.best = {"r1": -1.0, "epoch": epoch + 1, "metrics": None}  # no validation pairs: best = last
    return metrics


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


