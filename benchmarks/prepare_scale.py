"""How long `malm data prepare` takes and how much memory it peaks at on a 100k-recipe layer1.json.

    .venv/bin/python -m benchmarks.prepare_scale                  # 100k recipes → benchmarks/results/prepare_scale.json
    .venv/bin/python -m benchmarks.prepare_scale --recipes 20000 --out /tmp/ps.json

It writes a Recipe1M-shaped layer1.json (text only; layer2.json lists photos for ~40% of the recipes but
no image files exist, so the image lookups run and count as missing; det_ingrs.json for every recipe)
with recipe lengths close to Recipe1M's (about 9 ingredients and 10 instructions), then runs `prepare`
in a fresh subprocess — twice: the build, then the reuse — and records wall time and the child's
peak RSS (getrusage ru_maxrss), with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info
from malm._atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "prepare_scale.json"

_UNITS = ["cup", "cups", "tablespoons", "teaspoon", "g", "ounces", "pound", "pinch", "cloves", "can"]
_VERBS = ["chop", "mix", "stir", "bake", "simmer", "whisk", "fold", "season", "fry", "boil", "serve", "drain"]
_GLUE = ["the", "and", "with", "in", "a", "until", "for", "minutes", "over", "medium", "heat", "into", "of"]


def _words(rng: random.Random, n: int) -> list[str]:
    # A long-tailed made-up vocabulary (like real recipe words): a few frequent, many rare.
    return [f"w{int(rng.paretovariate(0.35)) % 200_000}" for _ in range(n)]


def write_dataset(root: Path, recipes: int, seed: int = 0) -> dict[str, int]:
    """Stream layer1/layer2/det_ingrs.json for `recipes` recipes into `root`; returns file sizes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    parts = ["train"] * 70 + ["val"] * 15 + ["test"] * 15
    with open(root / "layer1.json", "w", encoding="utf-8") as l1, open(root / "layer2.json", "w", encoding="utf-8") as l2, \
            open(root / "det_ingrs.json", "w", encoding="utf-8") as det:
        for f in (l1, l2, det):
            f.write("[")
        first2 = True
        for i in range(recipes):
            rid = f"{i:010x}"
            ingredients = [
                f"{rng.randint(1, 4)} {rng.choice(['', '1/2 ', '12 '])}{rng.choice(_UNITS)} " + " ".join(_words(rng, rng.randint(1, 4)))
                for _ in range(rng.randint(3, 16))
            ]
            instructions = [
                " ".join([rng.choice(_VERBS), *(rng.choice(_GLUE) if rng.random() < 0.5 else w
                                                 for w in _words(rng, rng.randint(4, 22)))]) + "."
                for _ in range(rng.randint(2, 18))
            ]
            rec = {
                "id": rid, "partition": rng.choice(parts), "url": f"http://www.example.com/recipe/{rid}",
                "title": " ".join(_words(rng, rng.randint(2, 7))).title(),
                "ingredients": [{"text": t} for t in ingredients],
                "instructions": [{"text": t} for t in instructions],
            }
            l1.write(("," if i else "") + json.dumps(rec))
            det.write(("," if i else "") + json.dumps({
                "id": rid, "ingredients": [{"text": t.split()[-1]} for t in ingredients],
                "valid": [rng.random() < 0.8 for _ in ingredients]}))
            if rng.random() < 0.4:
                images = [{"id": f"{rng.getrandbits(40):010x}.jpg", "url": ""} for _ in range(rng.randint(1, 3))]
                l2.write(("" if first2 else ",") + json.dumps({"id": rid, "images": images}))
                first2 = False
        for f in (l1, l2, det):
            f.write("]")
    return {name: (root / name).stat().st_size for name in ("layer1.json", "layer2.json", "det_ingrs.json")}


_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from malm.training.data import prepare
p = prepare(sys.argv[1], cache_dir=sys.argv[2], min_freq=int(sys.argv[3]))
seconds = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_seconds": ru.ru_utime + ru.ru_stime, "reused": p.reused,
                  "vocab": len(p.vocab), "stats": p.stats.to_dict(), "peak_rss_bytes": ru.ru_maxrss * 1024}))
"""


def run_prepare(data: Path, cache: Path, min_freq: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(cache), str(min_freq)],
                       capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"prepare failed:\n{p.stderr}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_seconds_with_interpreter"] = wall
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-freq", type=int, default=10)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated data here (default: a temp dir)")
    args = ap.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="malm-prepare-scale-"))
    try:
        t0 = time.perf_counter()
        sizes = write_dataset(work / "data", args.recipes, args.seed)
        gen_s = time.perf_counter() - t0
        print(f"generated {args.recipes} recipes in {gen_s:.1f}s: {sizes}", file=sys.stderr)
        build = run_prepare(work / "data", work / "cache", args.min_freq)
        print(f"prepare (build): {build['seconds']:.1f}s ({build['cpu_seconds']:.1f}s CPU), peak RSS {build['peak_rss_bytes'] / 2**20:.0f} MiB",
              file=sys.stderr)
        reuse = run_prepare(work / "data", work / "cache", args.min_freq)
        print(f"prepare (reuse): {reuse['seconds']:.2f}s, peak RSS {reuse['peak_rss_bytes'] / 2**20:.0f} MiB",
              file=sys.stderr)
        cache_bytes = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file())
        result = {
            "benchmark": "prepare_scale",
            "command": " ".join(["python -m benchmarks.prepare_scale", *(argv if argv is not None else sys.argv[1:])]),
            "recipes": args.recipes,
            "min_freq": args.min_freq,
            "source_bytes": sizes,
            "layer1_bytes_per_recipe": round(sizes["layer1.json"] / args.recipes, 1),
            "generate_seconds": round(gen_s, 2),
            # Wall time suffers from other work on a shared machine; CPU time (user + sys) much less so.
            "build": {"seconds": round(build["seconds"], 2), "cpu_seconds": round(build["cpu_seconds"], 2),
                      "peak_rss_mib": round(build["peak_rss_bytes"] / 2**20, 1),
                      "recipes_per_second": round(args.recipes / build["seconds"]),
                      "recipes_per_cpu_second": round(args.recipes / build["cpu_seconds"])},
            "reuse": {"seconds": round(reuse["seconds"], 3), "peak_rss_mib": round(reuse["peak_rss_bytes"] / 2**20, 1),
                      "reused": reuse["reused"]},
            "cache_bytes": cache_bytes,
            "vocab_size": build["vocab"],
            "stats": build["stats"],
            "baseline": {"python_startup_and_imports_peak_rss_mib": round(_baseline_rss() / 2**20, 1)},
            "machine": machine_info(),
        }
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _baseline_rss() -> int:
    """Peak RSS of a child that only imports malm.training.data (what prepare's numbers sit on top of)."""
    code = ("import resource, malm.training.data; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout)


if __name__ == "__main__":
    main()
