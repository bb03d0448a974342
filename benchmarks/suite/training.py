"""Training throughput: samples/s of the real trainer (`malm train`) per tiny preset on CPU.

Each preset runs a few optimizer steps in its own process on the benchmark's data, logging every step
(`train.log_every=1`); the first steps (worker start-up, allocator warm-up) are dropped and the median
of the rest is reported, with the process's peak resident memory. Full presets in bf16 run only where
torch sees a CUDA GPU; on a CPU-only machine that row says so.
"""

from __future__ import annotations

import json
import os
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


def _train(data: Path, out: Path, preset: str, steps: int, batch: int, device: str, log: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--data", str(data), "--out", str(out), "--preset", preset, "--device", device,
            "--batch-size", str(batch), "--epochs", "1000", "--stop-after-steps", str(steps),
            "--set", "train.log_every=1", "--set", "train.eval_every=100000", "--no-progress"]
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ malm " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "malm.cli", *args], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1200:]
        raise RuntimeError(f"`malm {' '.join(args)}` exited {proc.returncode}:\n{tail}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in records if r.get("type") == "train" and "samples_per_s" in r]
    return {"rates": rates, "wall_s": wall, "max_rss_mib": usage.ru_maxrss / 1024}


def run(ctx: Context) -> dict[str, Any]:
    art = ctx.artifacts()
    if art.data is None:
        raise SectionSkipped("no training data: pass --data, or let the benchmark build its tiny model")
    quick = ctx.options.quick
    steps, warm, batch = (2, 1, 8) if quick else (8, 2, 64)
    presets = CPU_PRESETS[:1] if quick else CPU_PRESETS
    threads = max(ctx.options.threads)
    work = ctx.scratch / "train"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "train.log"
    rows = []
    for preset in presets:
        r = _train(art.data, work / preset, preset, steps + warm, batch, "cpu", log)
        rates = r["rates"][warm:] or r["rates"]
        sps = float(np.median(rates))
        rows.append({"preset": preset, "device": "cpu", "threads": threads, "batch_size": batch,
                     "samples_per_s": round(sps, 2), "step_p50_ms": round(batch / sps * 1e3, 1),
                     "steps_timed": len(rates), "peak_memory_mib": round(r["max_rss_mib"], 1),
                     "process_wall_s": round(r["wall_s"], 1)})
        ctx.log(f"training: {preset} cpu batch {batch}: {sps:.1f} samples/s (peak RSS {r['max_rss_mib']:.0f} MiB)")
    gpu_note = "no CUDA GPU on this machine: full-preset bf16 GPU rows are not measured here"
    try:
        import torch

        if torch.cuda.is_available():
            gpu_note = f"GPU: {torch.cuda.get_device_name(0)}"
            for preset in GPU_PRESETS:
                r = _train(art.data, work / f"{preset}-gpu", preset, 20 + 5, 64, "cuda", log)
                rates = r["rates"][5:] or r["rates"]
                sps = float(np.median(rates))
                rows.append({"preset": preset, "device": "cuda (bf16 autocast)", "threads": None, "batch_size": 64,
                             "samples_per_s": round(sps, 2), "step_p50_ms": round(64 / sps * 1e3, 1),
                             "steps_timed": len(rates), "peak_memory_mib": None,
                             "process_wall_s": round(r["wall_s"], 1)})
    except ImportError:
        gpu_note = "torch not installed"
    return {"presets": rows, "data": str(art.data), "gpu": gpu_note,
            "note": (f"`malm train` in a child process, {steps} timed steps after {warm} warm-up, data loading "
                     f"included (preset workers), log every step; peak memory = the process's max RSS. {gpu_note}.")}
