"""Training: where the time goes. Three measurements per preset, each alone, so a slow one names itself.

1. **Loader alone** (`loader_rate`): the real training dataset and DataLoader at 224 px, no model: images/s
   in total and per worker, from the uint8 image cache (and, for comparison, decoding every JPEG).
2. **Step alone** (`step_rate`): the real `train_step` on one batch kept on the device: images/s, the
   FLOPs of a step counted by `torch.utils.flop_counter` (forward + backward) and MFU against a peak
   (the GPU's bf16 dense spec, or this CPU's measured fp32 matmul rate).
3. **Full loop** (`full_loop`): `malm train` in a child process across an epoch end, read back from its
   metrics.jsonl: images/s, the share of the step loop spent waiting for data, peak memory, and what
   the epoch's end (validation + saving) cost.

    malm bench --only training [--device cuda]          # tiny presets on CPU, full presets on CUDA
    python -m benchmarks.gpu_check                        # the three full presets on one GPU, as JSON

On CPU the tiny presets run at small sizes (a smoke test of the benchmark; numbers under load say so).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.context import Context, SectionSkipped

CPU_PRESETS = ("ht-tiny", "tnlbt-tiny", "malm-tiny")
GPU_PRESETS = ("ht", "tnlbt", "malm")
# bf16 dense tensor-core peaks (spec sheets, FLOP/s): MFU is read against these.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def _malm(args: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, Any]:
    """Run `python -m malm.cli ARGS`, output appended to `log`; (wall seconds, resource usage)."""
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ malm " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "malm.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise RuntimeError(f"`malm {' '.join(args)}` exited {code}:\n{tail}")
    return time.perf_counter() - t0, usage


def synth_data(work: Path, recipes: int, image_size: int, log: Path, workers: int = 2) -> Path:
    """The procedural benchmark at `work/data-<recipes>-<size>`, generated once (deterministic by seed)."""
    data = work / f"data-{recipes}-{image_size}"
    if not (data / "layer1.json").is_file():
        _malm(["data", "synth", str(data), "--recipes", str(recipes), "--image-size", str(image_size),
               "--workers", str(workers), "--force"], log)
    return data


def _prepared(data: Path, config: Any, size: int, cached: bool) -> tuple[Any, Any, float]:
    from malm.preprocess import PreprocessConfig
    from malm.training.data import RecipeImageDataset, prepare
    from malm.training.data.image_cache import prepare_images
    from malm.training.train import SeededItems

    prepared = prepare(data, min_freq=config.data.min_freq, limits=config.data.limits())
    pre = PreprocessConfig.for_size(size)
    t0 = time.perf_counter()
    images = prepare_images(prepared, pre) if cached else None
    built = time.perf_counter() - t0 if images is not None and images.built else 0.0
    split = images.split("train") if images is not None else None
    ds = SeededItems(RecipeImageDataset(prepared, "train", pre, train=True, images=split), seed=0)
    return prepared, ds, built


def loader_rate(data: Path, config: Any, workers: int, batches: int, batch: int, size: int = 224,
                cached: bool = True, warmup: int = 2) -> dict[str, Any]:
    """Images/s of the training DataLoader alone (`workers` processes; 0 = the calling process only)."""
    import torch
    from torch.utils.data import DataLoader

    from malm.training.train import EpochBatchSampler

    _, ds, built = _prepared(data, config, size, cached)
    n = len(ds)
    if n < batch:
        raise RuntimeError(f"loader benchmark: {n} training pairs < batch {batch}")
    sampler = EpochBatchSampler(n, batch, 0, 1, seed=0)
    cpu0 = _cpu_seconds()
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        generator=torch.Generator().manual_seed(0))
    seen, timed, epoch, t0 = 0, 0.0, 0, 0.0
    while seen < warmup + batches:
        sampler.set_epoch(epoch)
        epoch += 1
        for b in loader:
            seen += 1
            if seen == warmup:
                t0 = time.perf_counter()
            if seen == warmup + batches:
                timed = time.perf_counter() - t0
                break
            del b
    del loader  # joins the workers, so their CPU time is counted below
    gc.collect()
    cpu = _cpu_seconds() - cpu0
    total = batches * batch / timed
    return {"size": size, "cached": cached, "workers": workers, "batch": batch, "batches_timed": batches,
            "images_per_s": round(total, 1), "images_per_s_per_worker": round(total / max(1, workers), 1),
            # Loaded machines give a process a fraction of a core: images per CPU-second (this process and
            # its workers, start-up and prefetched batches included, so a lower bound) is the per-core rate.
            "cpu_s": round(cpu, 2), "images_per_cpu_s": round((warmup + batches) * batch / max(1e-9, cpu), 1),
            "cache_build_s": round(built, 2) if built else None}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_flops(device: Any) -> tuple[float | None, str]:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak, f"{name} bf16 dense spec {peak / 1e12:.0f} TFLOP/s"
        return None, f"{name}: no bf16 peak on record (MFU not computed)"
    a = torch.randn(1024, 1024)
    a @ a
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        a @ a
        reps += 1
    peak = 2 * 1024**3 * reps / (time.perf_counter() - t0)
    return peak, f"measured fp32 1024² matmul on {torch.get_num_threads()} thread(s): {peak / 1e9:.1f} GFLOP/s"


def step_rate(data: Path, config: Any, device_name: str, steps: int, warmup: int = 2) -> dict[str, Any]:
    """The real `train_step` on one batch resident on the device: images/s, FLOPs per step, MFU."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from malm.training import train as T
    from malm.training.task import Task

    device = T.resolve_device(device_name, 0)
    tc = config.train
    prepared, ds, _ = _prepared(data, config, config.model.image.image_size, tc.image_cache)
    batch = next(iter(DataLoader(ds, batch_size=tc.batch_size, sampler=T.EpochBatchSampler(len(ds), tc.batch_size, 0, 1, 0))))
    batch = T.to_device(batch, device)
    torch.manual_seed(0)
    task = Task(config, vocab_size=len(prepared.vocab)).to(device).train()
    optimizer = T.build_optimizer(task, tc, device)
    if tc.compile:
        task.model.image_encoder.compile()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    amp = tc.amp and device.type == "cuda"

    def one() -> Any:
        return T.train_step(task, task, optimizer, params, batch, config.preprocess(), 1.0, False, 0.5, amp,
                            tc.grad_clip, device)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        one()
    with FlopCounterMode(display=False) as counter:
        one()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        total, _r = one()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    peak, peak_note = _peak_flops(device)
    achieved = flops / seconds
    out = {"device": str(device), "batch": tc.batch_size, "amp_bf16": amp, "compiled": tc.compile,
           "steps_timed": steps, "step_ms": round(seconds * 1e3, 2), "images_per_s": round(tc.batch_size / seconds, 1),
           "gflop_per_image": round(flops / tc.batch_size / 1e9, 3), "achieved_tflop_s": round(achieved / 1e12, 3),
           "mfu": round(achieved / peak, 4) if peak else None, "peak": peak_note,
           "loss_finite": bool(torch.isfinite(total).item())}
    if device.type == "cuda":
        out["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def full_loop(data: Path, preset: str, device: str, out: Path, log: Path, steps_per_epoch: int, epochs: int,
              batch: int, log_every: int, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """`malm train` across `epochs` epoch ends (its own workers, validation and saving), read back from
    metrics.jsonl; the first window (start-up, allocator and cache warm-up) is dropped."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--data", str(data), "--out", str(out), "--preset", preset, "--device", device,
            "--batch-size", str(batch), "--epochs", "1000", "--stop-after-steps", str(steps_per_epoch * epochs),
            "--set", f"train.log_every={log_every}", "--no-progress", *sum((["--set", o] for o in overrides), [])]
    wall, usage = _malm(args, log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in records if r.get("type") == "train"]
    ends = [r for r in records if r.get("type") == "epoch_end"]
    timed = train[1:] or train
    if not timed:
        raise RuntimeError(f"full loop {preset}: no training lines in {out / 'metrics.jsonl'}")
    sps = float(np.median([r["samples_per_s"] for r in timed]))
    epoch_steps_s = steps_per_epoch * batch / sps
    stall = float(np.median([r["seconds"] for r in ends])) if ends else None
    result = {"preset": preset, "device": device, "batch": batch, "steps": len(train) * log_every,
              "images_per_s": round(sps, 1), "windows": [r["samples_per_s"] for r in train],
              "data_wait_share": round(float(np.median([r.get("data_wait_share", 0.0) for r in timed])), 4),
              "epoch_end_s": stall, "epoch_end_share": round(stall / (stall + epoch_steps_s), 4) if stall is not None else None,
              "steps_per_epoch": steps_per_epoch, "process_wall_s": round(wall, 1),
              "process_max_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if any("peak_mem_mib" in r for r in train):
        result["peak_mem_mib"] = max(r.get("peak_mem_mib", 0) for r in train)
    return result


def steps_per_epoch(data: Path, config: Any, batch: int) -> int:
    from malm.training.data import prepare

    prepared = prepare(data, min_freq=config.data.min_freq, limits=config.data.limits())
    return len(prepared.split("train").paired_indices()) // batch


def profile_preset(preset: str, data: Path, device: str, work: Path, log: Path, *, step_steps: int,
                   loop_epochs: int, batch: int | None = None, log_every: int = 5,
                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Step alone and full loop of one preset (the loader is measured once, outside)."""
    from malm.training.config import load_preset, parse_overrides

    config = load_preset(preset).with_overrides(
        {**({"train.batch_size": batch} if batch else {}), **parse_overrides(list(overrides))})
    b = config.train.batch_size
    spe = steps_per_epoch(data, config, b)
    if spe < 1:
        raise RuntimeError(f"{data}: fewer training pairs than one batch of {b}")
    return {"preset": preset, "batch": b, "step": step_rate(data, config, device, step_steps),
            "full_loop": full_loop(data, preset, device, work / f"run-{preset}", log, spe, loop_epochs, b,
                                   log_every, overrides)}


def run(ctx: Context) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise SectionSkipped("torch not installed") from None
    opts = ctx.options
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SectionSkipped("--device cuda: torch sees no CUDA GPU here")
    work = ctx.scratch / "train"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "train.log"
    quick, gpu = opts.quick, device == "cuda"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    recipes = 4000 if gpu else (60 if quick else 400)
    # A dataset the run already has (--data, or the one a full `malm bench` built first) is reused.
    built = ctx._artifacts.data if ctx._artifacts is not None else None
    data = opts.data or built or synth_data(work, recipes, 256, log, workers=min(cores, 16))
    from malm.training.config import load_preset

    base = load_preset("ht" if gpu else "ht-tiny")
    worker_counts = sorted({0, 1} | ({min(2, cores)} if not quick else set()) | ({cores // 2, cores - 1} if gpu else set()))
    loader = [loader_rate(data, base, w, batches=3 if quick else 12, batch=16 if quick else 32) for w in worker_counts]
    loader.append(loader_rate(data, base, 0, batches=2 if quick else 4, batch=16 if quick else 32, cached=False))
    ctx.log("training: loader " + ", ".join(f"{r['workers']}w{'' if r['cached'] else ' decode'} "
                                           f"{r['images_per_s']:.0f} img/s ({r['images_per_cpu_s']:.0f}/CPU-s)"
                                           for r in loader))
    presets = GPU_PRESETS if gpu else (CPU_PRESETS[:1] if quick else CPU_PRESETS)
    rows = []
    for preset in presets:
        r = profile_preset(preset, data, device, work, log, step_steps=3 if quick and not gpu else 10,
                           loop_epochs=2, batch=None if gpu else 8 if quick else 16, log_every=2 if not gpu else 5)
        rows.append(r)
        ctx.log(f"training: {preset} {device}: step alone {r['step']['images_per_s']} img/s "
                f"(MFU {r['step']['mfu']}), full loop {r['full_loop']['images_per_s']} img/s, data wait "
                f"{r['full_loop']['data_wait_share']:.0%}, epoch end {r['full_loop']['epoch_end_s']} s")
    measured = [r for r in rows if r["step"]["images_per_s"] > 0 and r["full_loop"]["images_per_s"] > 0]
    if not measured or not all(x["images_per_s"] > 0 for x in loader):
        raise RuntimeError("training benchmark measured nothing")
    per_core = next(x["images_per_cpu_s"] for x in loader if x["workers"] == 0 and x["cached"])
    return {"device": device, "data": str(data), "loader": loader, "presets": rows,
            "loader_images_per_s_per_core_224": per_core, "load_average": [round(v, 2) for v in os.getloadavg()],
            "note": ("loader: the training dataset + DataLoader alone at 224 px (uint8 cache unless `cached` is "
                     "false); 0 workers = one core, the calling process. step: train_step on one batch kept on "
                     "the device, FLOPs by torch.utils.flop_counter (fwd+bwd). full loop: `malm train` in a child "
                     "process across epoch ends, first log window dropped.")}
