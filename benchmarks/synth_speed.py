"""How fast the procedural food benchmark is written (target: 10k recipes in under 2 minutes on 2 cores).

    .venv/bin/python benchmarks/synth_speed.py                      # 10k recipes, 2 workers
    .venv/bin/python benchmarks/synth_speed.py --recipes 2000 --workers 1

Writes benchmarks/results/synth_speed.json (timings, counts, machine info, load average at the start:
the machine may be shared, so read the number together with the load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from malm._atomic import write_text_atomic  # noqa: E402
from malm.training.synth import SYNTH_VERSION, generate  # noqa: E402


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the data here (default: a temp dir, removed)")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results" / "synth_speed.json")
    args = ap.parse_args()

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    with tempfile.TemporaryDirectory(prefix="malm-synth-bench-") as tmp:
        out = args.out or Path(tmp) / "synth"
        t0 = time.perf_counter()
        cpu0 = _cpu_seconds()
        stats = generate(out, recipes=args.recipes, seed=args.seed, image_size=args.image_size,
                         workers=args.workers, force=args.out is not None)
        seconds = time.perf_counter() - t0
        main_cpu = _cpu_seconds() - cpu0  # recipes, JSON, pool bookkeeping (forkserver workers are not our children)
        cpu = main_cpu + stats.render_cpu_seconds
        disk = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    result = {
        "benchmark": "synth_speed",
        "synth_version": SYNTH_VERSION,
        "recipes": stats.recipes,
        "images": stats.images,
        "image_size": args.image_size,
        "workers": args.workers,
        "seconds": round(seconds, 2),
        "recipes_per_s": round(stats.recipes / seconds, 1),
        "images_per_s": round(stats.images / seconds, 1),
        "bytes_written": disk,
        # On a shared machine wall time overstates the cost: est_idle_wall_seconds is what otherwise idle
        # cores would need (serial main-process CPU + photo CPU spread over the workers).
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_main": round(main_cpu, 2),
        "cpu_seconds_photos": round(stats.render_cpu_seconds, 2),
        "cpu_ms_per_photo": round(1000 * stats.render_cpu_seconds / max(1, stats.images), 2),
        "est_idle_wall_seconds": round(main_cpu + stats.render_cpu_seconds / args.workers, 1),
        "target": "10k recipes < 120 s on 2 cores",
        "machine": {
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in load],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(args.results, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
