"""MALM vs H-T on the pretrained hybrid stem: the equal-epoch and equal-CPU tables, beside the ingredient oracle.

    python benchmarks/hybrid_report.py --work runs/compare-hybrid/bench10k --oracle benchmarks/results/oracle_synth-10000-0-128.json \
        --pair "equal CPU" "ht-infonce-hybrid-tiny e12" "malm-hybrid-tiny e6" \
        --pair "equal epochs" "ht-infonce-hybrid-tiny e6" "malm-hybrid-tiny e6" --name malm_hybrid_10k

Reads the finished runs of `benchmarks/compare_methods.py` (WORK/<method>_s<seed>/result.json: im→rec R@K on
the test split's 1k subsets, training CPU seconds) and writes benchmarks/results/<name>.json and .md: per
method the R@1 of every seed, mean ± std (ddof 1), CPU seconds, and R@1 as a fraction of the oracle's ceiling
(`benchmarks/oracle.py`, ties in expectation); per --pair the gap (B - A) in mean R@1 and its std (the
two runs' seed stds combined: sqrt(sA²/nA + sB²/nB) is the standard error; the table gives the gap over
the larger seed std too, as the goal asks "gap > 2 std").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from malm._atomic import write_text_atomic  # noqa: E402


def load_runs(work: Path) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(work.glob("*/result.json")):
        r = json.loads(path.read_text())
        runs.setdefault(r["method"], []).append(r)
    for rs in runs.values():
        rs.sort(key=lambda r: r["seed"])
    return runs


def _std(x: list[float]) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def method_row(rs: list[dict[str, Any]], ceiling: float | None) -> dict[str, Any]:
    r1 = [r["test"]["im2recipe"]["R@1"] for r in rs]
    row = {"seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"], "R@1": r1,
           "R@1_mean": float(np.mean(r1)), "R@1_std": _std(r1),
           "R@5_mean": float(np.mean([r["test"]["im2recipe"]["R@5"] for r in rs])),
           "medR_mean": float(np.mean([r["test"]["im2recipe"]["medR"] for r in rs])),
           "train_cpu_seconds": [r["train_cpu_seconds"] for r in rs],
           "train_cpu_seconds_mean": float(np.mean([r["train_cpu_seconds"] for r in rs]))}
    if ceiling:
        row["fraction_of_oracle"] = row["R@1_mean"] / ceiling
    return row


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import machine_info, summary_line

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--oracle", type=Path, help="benchmarks/oracle.py's JSON for the same data")
    p.add_argument("--pair", nargs=3, action="append", default=[], metavar=("LABEL", "A", "B"))
    p.add_argument("--calibration", type=Path, help="compare_methods.py --calibrate's calibration.json")
    p.add_argument("--note", action="append", default=[], help="a line for the report (probes, what was cut)")
    p.add_argument("--name", required=True)
    p.add_argument("--title", default="MALM vs H-T on the pretrained hybrid stem (InfoNCE)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    runs = load_runs(args.work)
    oracle = json.loads(args.oracle.read_text()) if args.oracle else None
    ceiling = oracle["expected"]["R@1"] if oracle else None
    rows = {m: method_row(rs, ceiling) for m, rs in runs.items()}
    pairs = []
    for label, a, b in args.pair:
        if a not in rows or b not in rows:
            continue
        ra, rb = rows[a], rows[b]
        gap = rb["R@1_mean"] - ra["R@1_mean"]
        se = float(np.sqrt(ra["R@1_std"] ** 2 / len(ra["R@1"]) + rb["R@1_std"] ** 2 / len(rb["R@1"])))
        pairs.append({"label": label, "A": a, "B": b, "gap_R@1": gap, "gap_se": se,
                      "max_seed_std": max(ra["R@1_std"], rb["R@1_std"]),
                      "cpu_ratio_B_over_A": rb["train_cpu_seconds_mean"] / ra["train_cpu_seconds_mean"]})
    machine = machine_info()
    res = {"work": str(args.work), "oracle": oracle and {k: oracle[k] for k in ("data", "pairs", "size", "expected",
                                                                                "pessimistic", "optimistic")},
           "methods": rows, "pairs": pairs, "machine": machine}
    lines = [f"# {args.title}", "",
             f"Runs: `{args.work}` (`benchmarks/compare_methods.py`, 1 torch thread each, whole epochs, each run's LR "
             "schedule set for its own epochs). Test split, image→recipe, `malm evaluate`'s protocol (H-T: 10 "
             "seeded subsets of min(1000, pairs)); R@K in percent; mean ± std (ddof 1) over seeds. CPU seconds: "
             "process CPU time of the training loop (shared machine: wall time is not comparable).", ""]
    if oracle:
        lines += [f"Ingredient oracle on the same pairs (`benchmarks/oracle.py`, ties in expectation): R@1 "
                  f"**{ceiling:.1f}** (pessimistic {oracle['pessimistic']['R@1']:.1f}, optimistic "
                  f"{oracle['optimistic']['R@1']:.1f}).", ""]
    lines += ["| method | epochs | seeds | R@1 per seed | R@1 | R@5 | medR | train CPU s (mean) | R@1 / oracle |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        frac = f"{100 * r['fraction_of_oracle']:.0f}%" if "fraction_of_oracle" in r else "—"
        lines.append(f"| {m} | {r['epochs']} | {len(r['seeds'])} | {', '.join(f'{x:.1f}' for x in r['R@1'])} | "
                     f"{r['R@1_mean']:.1f} ± {r['R@1_std']:.1f} | {r['R@5_mean']:.1f} | {r['medR_mean']:.1f} | "
                     f"{r['train_cpu_seconds_mean']:.0f} | {frac} |")
    if pairs:
        lines += ["", "| comparison | A | B | B − A (R@1) | std err | largest seed std | CPU B / A |",
                  "|---|---|---|---|---|---|---|"]
        for q in pairs:
            lines.append(f"| {q['label']} | {q['A']} | {q['B']} | {q['gap_R@1']:+.1f} | {q['gap_se']:.1f} | "
                         f"{q['max_seed_std']:.1f} | {q['cpu_ratio_B_over_A']:.2f} |")
    if args.calibration:
        calib = json.loads(args.calibration.read_text())
        res["calibration"] = calib
        lines += ["", f"CPU cost per training step (`compare_methods.py --calibrate`, `{args.calibration}`; batch 32, "
                  "1 thread):", "", "| method | CPU-s / step | steps / epoch there | CPU-s / epoch there |", "|---|---|---|---|"]
        lines += [f"| {m} | {c['cpu_s_per_step']} | {c['steps_per_epoch']} | {c['cpu_s_per_epoch']} |" for m, c in calib.items()]
    if args.note:
        res["notes"] = args.note
        lines += [""] + [f"- {n}" for n in args.note]
    lines += ["", f"Machine: {summary_line(machine)}."]
    out = args.results_dir / f"{args.name}.json"
    write_text_atomic(out, json.dumps(res, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
