"""What each part of MALM buys: H-T vs TNLBT vs MALM and MALM's ablations, same data, same CPU time.

    python benchmarks/ablation.py --quick                        # smoke test, ~1–2 minutes
    python benchmarks/ablation.py --minutes 4                    # the real table (generates 10k recipes)
    python benchmarks/ablation.py --data data/synth --minutes 4 --methods ht-tiny malm-tiny

Every method trains through the real trainer (`malm.training.train.run`, what `malm train` calls) on the
same procedural benchmark. "Same budget" means the same **process CPU time** (`time.process_time()` of
the training process, all its threads; DataLoader workers are off so all work is in-process), not wall
time: the machine is shared, and wall seconds depend on who else is running. Each method first runs 10
steps to measure its CPU seconds per step, then gets as many whole epochs as fit `--minutes` CPU minutes
(at least one), with the full warm-up + cosine schedule over them; the measured CPU seconds of the
training loop are reported next to the metrics, so any unfairness left by whole-epoch rounding is
visible. Validation runs only once, at the end, and the `last` checkpoint is evaluated on the test split:
1k image→recipe (and recipe→image) medR and R@1/5/10, H-T protocol (mean ± std over 10 seeded 1k
subsets), or all test pairs when there are fewer than 1k. Runs may go in parallel (`--threads 1`, one
process per method list, then `--merge`); a stopped run is rebuilt from its log with `--recover`.

Results: `benchmarks/results/ablation.json` and `.md` (`ablation-quick.*` with --quick; atomic writes).
The table there predates issue #13: its malm-tiny rows used the paper's matching (now
`loss.matching.mode = "paper"`; the default is "itm") and its ht-tiny the violating-mean triplet (now H-T's
"all"); benchmarks/compare_methods.py compares the methods as the presets now stand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from malm._atomic import write_text_atomic  # noqa: E402
from malm.errors import MalmError  # noqa: E402


@dataclass(frozen=True)
class Method:
    name: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


METHODS = [
    Method("ht-tiny", "ht-tiny", note="H-T: triplet + recipe self-supervision"),
    Method("tnlbt-tiny", "tnlbt-tiny", note="+ dynamic margin + cross decoder"),
    Method("malm-tiny", "malm-tiny", note="+ matching (global + local) + 75% mask + self-distillation"),
    Method(
        "malm-tiny no-mask",
        "malm-tiny",
        {"loss.mask.enabled": False, "loss.self_distill.weight": 0.0},
        "no mask augmentation (distillation needs masked patches, so it goes too)",
    ),
    Method("malm-tiny no-distill", "malm-tiny", {"loss.self_distill.weight": 0.0}, "no self-distillation"),
    Method("malm-tiny no-local", "malm-tiny", {"loss.matching.local_weight": 0.0}, "global matching only"),
    Method("malm-tiny mask-0.5", "malm-tiny", {"loss.mask.ratio": 0.5}, "mask ratio 0.5"),
    Method("malm-tiny mask-0.9", "malm-tiny", {"loss.mask.ratio": 0.9}, "mask ratio 0.9"),
    Method(
        "malm-tiny full-triplet",
        "malm-tiny",
        {"loss.mask.full_image_retrieval": True},
        "triplet on an extra unmasked pass (train = test input); matching/distill keep the masked pass",
    ),
    Method(
        "malm-tiny full-triplet no-local",
        "malm-tiny",
        {"loss.mask.full_image_retrieval": True, "loss.matching.local_weight": 0.0},
        "full-image triplet, global matching only",
    ),
    Method(
        "malm-tiny pair-neg-3",
        "malm-tiny",
        {"loss.matching.mode": "paper", "loss.matching.pair_negatives": 3},
        "global matching over decoded hard-negative pairs (not in the paper; see training/objectives/matching.py)",
    ),
    Method(
        "malm-tiny full-triplet pair-neg-3 local-pairs",
        "malm-tiny",
        {
            "loss.mask.full_image_retrieval": True,
            "loss.matching.mode": "paper",
            "loss.matching.pair_negatives": 3,
            "loss.matching.local_pairs": True,
        },
        "full-image triplet; global and local matching over decoded hard-negative pairs (leak closed)",
    ),
    # Issue #14: the same methods on a hybrid ViT (frozen ImageNet EfficientNet-Lite0 stages as the patch stem).
    Method("ht-hybrid-tiny", "ht-hybrid-tiny", note="H-T on the hybrid ViT (ImageNet stem, 96 px, 36 tokens)"),
    Method("malm-hybrid-tiny", "malm-hybrid-tiny", note="MALM on the hybrid ViT (full-image triplet)"),
]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_data(data: Path | None, work: Path, recipes: int, seed: int, image_size: int) -> Path:
    if data is not None:
        if not (data / "layer1.json").exists():
            raise MalmError(f"--data {data}: no layer1.json (generate one with `malm data synth`)")
        return data
    from malm.training.synth import generate

    out = work / f"synth-{recipes}-{seed}-{image_size}"
    if (out / "layer1.json").exists() and not (out / ".in_progress").exists():
        return out
    _log(f"generating the procedural benchmark: {recipes} recipes → {out}")
    stats = generate(out, recipes=recipes, seed=seed, image_size=image_size, workers=2, force=out.exists())
    _log(f"  {stats.images} photos in {stats.seconds:.0f} s")
    return out


def _train(data: Path, run_dir: Path, config: Any, stop_after_steps: int = 0) -> dict[str, Any]:
    """Train through the real entry point; adds process CPU seconds (`cpu_total`: the whole call,
    `cpu_loop`: from the first training step on, i.e. without data preparation and model building)."""
    from malm.training.train import TrainOptions, run

    if run_dir.exists():
        shutil.rmtree(run_dir)
    # CPU time, not wall time: the machine is shared, so wall seconds depend on who else is running.
    # process_time() counts every thread of this process (num_workers=0 keeps data loading in it too).
    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        if msg.startswith("training ") and "loop" not in marks:  # said right before the first step
            marks["loop"] = time.process_time()

    opts = TrainOptions(
        data_dir=data,
        out_dir=run_dir,
        config=config,
        device="cpu",
        stop_after_steps=stop_after_steps,
        # a run stopped early saves `last` only through save_every
        save_every=stop_after_steps,
        progress_bar=False,
        log=log,
    )
    c0 = time.process_time()
    summary = run(opts)
    c1 = time.process_time()
    return {**summary, "cpu_total": c1 - c0, "cpu_loop": c1 - marks.get("loop", c0)}


def _config(method: Method, base: dict[str, Any]) -> Any:
    from malm.training.config import load_preset

    return load_preset(method.preset).with_overrides({**base, **method.overrides})


def evaluate(run_dir: Path, data: Path) -> dict[str, Any]:
    """Test-split 1k metrics of the run's `last` checkpoint (all pairs when fewer than 1k)."""
    from malm.evaluation import retrieval_metrics
    from malm.training.checkpoint import load_model
    from malm.training.data import RecipeImageDataset, prepare
    from malm.training.embed import embed_pairs

    loaded = load_model(run_dir, tag="last")
    cfg = loaded.config
    prepared = prepare(data, min_freq=cfg.data.min_freq, limits=cfg.data.limits(), log=lambda _m: None)
    test = RecipeImageDataset(prepared, "test", cfg.preprocess(), train=False)
    img, rec, _ = embed_pairs(loaded.model, test, __import__("torch").device("cpu"), batch_size=128)
    size = min(1000, len(img))
    m = retrieval_metrics(img, rec, sizes=[size], protocol="ht", seed=0)
    key = next(iter(m["im2recipe"]))
    return {"size": size, "key": key, "im2recipe": m["im2recipe"][key], "recipe2im": m["recipe2im"][key]}


def run_method(
    method: Method,
    data: Path,
    work: Path,
    budget_s: float,
    base: dict[str, Any],
    calib_steps: int,
    quick: bool,
) -> dict[str, Any]:
    slug = method.name.replace(" ", "_")
    cfg = _config(method, base)
    if quick:
        # Smoke test: a few steps of one epoch, no calibration. Checks the pipeline, measures nothing.
        epochs, sec_per_step, stop = 1, float("nan"), calib_steps
    else:
        # 1) calibration: seconds per optimizer step of this method on this machine right now
        calib = _train(data, work / f"{slug}.calib", cfg.with_overrides({"train.epochs": 1000}), calib_steps)
        sec_per_step = calib["cpu_loop"] / max(1, calib["steps"])  # CPU seconds per step
        steps_per_epoch = int(round(calib["steps"] / calib["epochs_done"])) if calib["epochs_done"] else 0
        shutil.rmtree(work / f"{slug}.calib", ignore_errors=True)
        if steps_per_epoch < 1:
            raise MalmError(f"{method.name}: could not measure steps per epoch")
        epochs, stop = max(1, int(round(budget_s / (sec_per_step * steps_per_epoch)))), 0
    # 2) the measured run: whole epochs in the budget, validation only at the end
    cfg = cfg.with_overrides({"train.epochs": epochs, "train.eval_every": epochs})
    t0 = time.perf_counter()
    summary = _train(data, work / slug, cfg, stop_after_steps=stop)
    wall = time.perf_counter() - t0
    metrics = evaluate(work / slug, data)
    curves = _curves(work / slug)
    return {
        "method": method.name,
        "preset": method.preset,
        "overrides": method.overrides,
        "note": method.note,
        "epochs": epochs,
        "steps": summary["steps"],
        "cpu_sec_per_step_calibrated": round(sec_per_step, 4),
        # training loop incl. the one final validation, process CPU seconds (all threads)
        "train_cpu_seconds": round(summary["cpu_loop"], 1),
        "run_cpu_seconds": round(summary["cpu_total"], 1),
        "train_wall_seconds": summary["seconds"],
        "wall_seconds": round(wall, 1),
        "loss_curves": curves,
        "test": metrics,
    }


def _curves(run_dir: Path) -> dict[str, list[float]]:
    """Per-loss means over the first and last 10% of the logged training windows (from metrics.jsonl)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("type") == "train"]
    if not rows:
        return {}
    k = max(1, len(rows) // 10)
    keys = [key for key in rows[0] if key not in ("type", "step", "epoch", "lr", "samples_per_s")]
    out = {}
    for key in keys:
        first = [r[key] for r in rows[:k] if key in r]
        last = [r[key] for r in rows[-k:] if key in r]
        if first and last:
            out[key] = [round(sum(first) / len(first), 4), round(sum(last) / len(last), 4)]
    return out


def _pm(m: dict[str, Any], key: str) -> str:
    return f"{m[key]:.1f} ± {m.get(key + '_std', 0.0):.1f}"


def _md(results: dict[str, Any]) -> str:
    lines = [
        "# Ablation: what each part of MALM buys (procedural benchmark, CPU, same CPU-time budget)",
        "",
        f"Data: `{results['data']}` ({results['n_test']} test pairs used per subset). The benchmark is "
        "**procedural** (`malm data synth`: rendered dishes from a catalogue of ingredients), **not Recipe1M**; "
        "numbers here say nothing about Recipe1M. "
        + (
            "QUICK MODE: 3 training steps per method, a smoke test; the numbers mean nothing. "
            if results["mode"] == "quick"
            else f"Budget {results['budget_s']:.0f} **process CPU seconds** of training per method "
            "(calibrated on 10 steps, rounded to whole epochs, at least one; the measured CPU seconds are in "
            "the table, so rounding is visible). "
        )
        + f"Machine: {results['machine']}. Command: `{results['command']}`.",
        "",
        "| method | what | epochs | steps | train CPU s | im→rec medR | R@1 | R@5 | R@10 "
        "| rec→im medR | R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["methods"]:
        a, b = r["test"]["im2recipe"], r["test"]["recipe2im"]
        cpu = r.get("train_cpu_seconds", r.get("train_seconds", float("nan")))
        lines.append(
            f"| {r['method']} | {r['note']} | {r['epochs']} | {r['steps']} | {cpu:.0f} | "
            + " | ".join(_pm(a, k) for k in ("medR", "R@1", "R@5", "R@10"))
            + " | "
            + " | ".join(_pm(b, k) for k in ("medR", "R@1", "R@5", "R@10"))
            + " |"
        )
    lines += [
        "",
        f"Test subsets: {results['methods'][0]['test']['key']} pairs, H-T protocol: mean ± std over 10 seeded "
        "subsets of the test split (the std is subset-sampling noise of one trained model, not seed-to-seed "
        "training noise, which one seed per method cannot show). R@K in percent. Train CPU s = process CPU "
        "time of the training loop (all threads) including the one final validation.",
    ]
    return "\n".join(lines) + "\n"


def recover(
    log: Path, work: Path, data: Path, results_path: Path, command: str, threads: int, budget_s: float
) -> int:
    """Rebuild the results of a run stopped before it wrote its JSON, from its stderr log (epochs, steps,
    training CPU seconds) and its run folders under `work` (metrics re-evaluated from `last`, loss curves)."""
    import re

    import torch

    known = {m.name: m for m in METHODS}
    lines = log.read_text().splitlines()
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines[:-1]):
        head = re.match(r"^(\S.*): calibrating", line)
        done = re.match(r"^\s+(\d+) epochs, (\d+) steps, (\d+) CPU s:", lines[i + 1])
        if not (head and done):
            continue
        m = known[head.group(1)]
        run_dir = work / "runs" / m.name.replace(" ", "_")
        out.append({
            "method": m.name, "preset": m.preset, "overrides": m.overrides, "note": m.note,
            "epochs": int(done.group(1)), "steps": int(done.group(2)),
            "train_cpu_seconds": float(done.group(3)), "recovered_from_log": str(log),
            "loss_curves": _curves(run_dir), "test": evaluate(run_dir, data),
        })  # fmt: skip
        _log(f"recovered {m.name}")
    if not out:
        raise MalmError(f"--recover {log}: no finished method in it")
    results = {
        "mode": "full", "command": command, "data": str(data), "n_test": out[0]["test"]["size"],
        "budget_s": budget_s, "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} threads",
        "base_overrides": {"train.num_workers": 0}, "methods": out,
    }  # fmt: skip
    write_text_atomic(results_path, json.dumps(results, indent=1) + "\n")
    _log(f"wrote {results_path}")
    return 0


def merge(paths: list[Path], results_path: Path) -> int:
    parts = [json.loads(p.read_text()) for p in paths]
    order = {m.name: i for i, m in enumerate(METHODS)}
    methods = sorted((m for part in parts for m in part["methods"]), key=lambda m: order.get(m["method"], 99))
    commands = " ; ".join(dict.fromkeys(p["command"] for p in parts))
    results = {**parts[0], "command": commands, "methods": methods}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results_path, json.dumps(results, indent=1) + "\n")
    write_text_atomic(results_path.with_suffix(".md"), _md(results))
    _log(f"wrote {results_path} and {results_path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="an existing benchmark folder (default: generate one)")
    p.add_argument("--recipes", type=int, help="recipes to generate (default 10000; --quick 300)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed")
    p.add_argument(
        "--minutes",
        type=float,
        default=4.0,
        help="training budget per method in process CPU minutes (default 4)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="only combine these result JSONs (e.g. from parallel runs) into --results, methods in table order",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke test: tiny data, 3 steps per method, no time budget"
    )
    p.add_argument("--methods", nargs="*", help="subset of: " + ", ".join(m.name for m in METHODS))
    p.add_argument("--work", type=Path, help="folder for data and runs (default: a temp folder, removed)")
    p.add_argument(
        "--results",
        type=Path,
        help="JSON path; the .md goes beside it (default benchmarks/results/ablation.json, or "
        "ablation-quick.json with --quick so a smoke test never overwrites a real table)",
    )
    p.add_argument(
        "--recover", type=Path, help="rebuild results from this stopped run's stderr log (+ --work)"
    )
    p.add_argument("--recover-command", default="", help="the stopped run's command line, for the record")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)

    if args.recover:
        if args.data is None or args.work is None or args.results is None:
            raise MalmError("--recover needs --data, --work and --results")
        return recover(
            args.recover,
            args.work,
            args.data,
            args.results,
            args.recover_command,
            args.threads,
            args.minutes * 60,
        )
    if args.merge:
        return merge(args.merge, args.results or ROOT / "benchmarks" / "results" / "ablation.json")
    import torch

    torch.set_num_threads(args.threads)
    recipes = args.recipes or (300 if args.quick else 10_000)
    minutes = args.minutes
    results_path = args.results or ROOT / "benchmarks" / "results" / (
        "ablation-quick.json" if args.quick else "ablation.json"
    )
    methods = METHODS
    if args.methods:
        known = {m.name: m for m in METHODS}
        bad = [n for n in args.methods if n not in known]
        if bad:
            raise MalmError(f"--methods: unknown {bad}; known: {', '.join(known)}")
        methods = [known[n] for n in args.methods]
    # No DataLoader worker processes: on 2 shared cores they only add start-up time and contention.
    base: dict[str, Any] = {"train.num_workers": 0}
    if args.quick:
        base |= {"train.batch_size": 16}
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.mkdtemp(prefix="malm-ablation-")
        work = Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = ensure_data(args.data, work, recipes, args.seed, image_size=72 if args.quick else 96)
        out: list[dict[str, Any]] = []
        for method in methods:
            _log(
                f"{method.name}: "
                + ("3 steps" if args.quick else f"calibrating, then ~{minutes:g} min of training")
            )
            r = run_method(
                method,
                data,
                work / "runs",
                minutes * 60,
                base,
                calib_steps=3 if args.quick else 10,
                quick=args.quick,
            )
            a = r["test"]["im2recipe"]
            _log(
                f"  {r['epochs']} epochs, {r['steps']} steps, {r['train_cpu_seconds']:.0f} CPU s: "
                f"medR {a['medR']:.1f} R@1 {a['R@1']:.1f} R@5 {a['R@5']:.1f} R@10 {a['R@10']:.1f}"
            )
            out.append(r)
            # partial results after every method, so a run stopped later keeps what it measured
            write_text_atomic(results_path.with_suffix(".partial.json"), json.dumps(out, indent=1) + "\n")
        results = {
            "mode": "quick" if args.quick else "full",
            "command": "python benchmarks/ablation.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "data": str(args.data or f"generated: {recipes} recipes, seed {args.seed}"),
            "n_test": out[0]["test"]["size"] if out else 0,
            "budget_s": None if args.quick else minutes * 60,
            "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads",
            "base_overrides": base,
            "methods": out,
        }
        results_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(results_path, json.dumps(results, indent=1) + "\n")
        write_text_atomic(results_path.with_suffix(".md"), _md(results))
        _log(f"wrote {results_path} and {results_path.with_suffix('.md')}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MalmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
