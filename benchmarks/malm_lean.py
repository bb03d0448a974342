"""Leaner MALM on the hybrid stem at equal CPU: short probes against `ht-infonce-hybrid-tiny`.

    python benchmarks/malm_lean.py --data runs/demo3k --probe NAME --seed 0     # train + evaluate one probe
    python benchmarks/malm_lean.py --data runs/demo3k --report                  # results/malm_lean.{md,json}

Each probe trains through the real trainer (`compare_methods.train_one`: 1 thread, no loader workers, stem
features cached, validation after the last epoch only) for its own number of epochs, chosen so that its
training CPU is about that of `ht-infonce-hybrid-tiny` at 12 epochs on the demo data (~160 CPU-s). Then the
test split with the `last` weights (all pairs, H-T protocol; no re-ranking). Each run writes
`WORK/<probe>_s<seed>/result.json`; `--report` gathers them with the machine's CPU features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation import Method  # noqa: E402
from benchmarks.compare_methods import _curves, train_one  # noqa: E402
from malm._atomic import write_text_atomic  # noqa: E402

# MALM with InfoNCE as malm-research runs it; no aux warm-up (main's ramp would ramp InfoNCE in too).
MALM = {"loss.retrieval": "infonce", "loss.aux_warmup_epochs": 0.0}
LEAN = {**MALM, "loss.matching.global_weight": 0.0}  # no ITM: no decoded pairs (the late local score stays)
PROBES: dict[str, Method] = {m.name: m for m in [
    Method("ht-infonce e12", "ht-infonce-hybrid-tiny", {"train.epochs": 12}, note="the demo's preset"),
    Method("malm e5", "malm-hybrid-tiny", {**MALM, "train.epochs": 5}, note="the preset as it is (+InfoNCE)"),
    Method("lean-noitm e7", "malm-hybrid-tiny", {**LEAN, "train.epochs": 7},
           note="ITM off: late local + mask + EMA distillation"),
    Method("lean-noitm-student e8", "malm-hybrid-tiny",
           {**LEAN, "loss.self_distill.target": "whole_image", "train.epochs": 8},
           note="ITM off, distillation target = the student's own whole-image pass (no EMA teacher pass)"),
    Method("lean-noitm-student e12", "malm-hybrid-tiny",
           {**LEAN, "loss.self_distill.target": "whole_image", "train.epochs": 12},
           note="the same at H-T's epochs (equal epochs, ~1.6x its CPU)"),
    Method("lean-noitm-student-aux0.25 e8", "malm-hybrid-tiny",
           {**LEAN, "loss.self_distill.target": "whole_image", "loss.matching.local_weight": 0.25,
            "loss.self_distill.weight": 0.25, "train.epochs": 8},
           note="the lean variant with its auxiliary losses at 1/4 weight (they dominate the shared encoders' update)"),
    Method("lean-itm-student e6", "malm-hybrid-tiny",
           {**MALM, "loss.self_distill.target": "whole_image", "train.epochs": 6},
           note="ITM on, distillation target = the student's own whole-image pass"),
]}  # fmt: skip


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _embeddings(model: Any, ds: Any) -> tuple[Any, Any]:
    """Global image and recipe embeddings of a split's pairs. no_grad, not inference_mode: the hybrid stem
    memoizes on the input tensor's version counter, which inference tensors do not have."""
    import torch
    import torch.nn.functional as F

    img, rec = [], []
    with torch.no_grad():
        for i in range(0, len(ds), 128):
            items = [ds[j] for j in range(i, min(len(ds), i + 128))]
            b = {k: torch.stack([it[k] for it in items]) for k in ("image", "title", "ingredients", "instructions")}
            img.append(model.project_image(model.image_features(b["image"]).cls).float())
            r = model.recipe_features(b["title"], b["ingredients"], b["instructions"])
            rec.append(F.normalize(r.embedding.float(), dim=-1))
    return torch.cat(img).numpy(), torch.cat(rec).numpy()


def evaluate(run_dir: Path, data: Path) -> dict[str, Any]:
    """Test image→recipe / recipe→image metrics of the `last` weights over all test pairs (no re-ranking)."""
    from malm.evaluation import retrieval_metrics
    from malm.training.checkpoint import load_model
    from malm.training.data import RecipeImageDataset, prepare

    loaded = load_model(run_dir, tag="last")
    model, cfg = loaded.model.eval(), loaded.config
    prepared = prepare(data, min_freq=cfg.data.min_freq, limits=cfg.data.limits(), log=lambda _m: None)
    img, rec = _embeddings(model, RecipeImageDataset(prepared, "test", cfg.preprocess(), train=False))
    size = min(1000, len(img))
    m = retrieval_metrics(img, rec, sizes=[size], protocol="ht", seed=0)
    key = next(iter(m["im2recipe"]))
    return {"size": size, "im2recipe": m["im2recipe"][key], "recipe2im": m["recipe2im"][key]}


def _val(run_dir: Path) -> dict[str, Any] | None:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    vals = [r for r in rows if r.get("type") == "val"]
    return {"im2recipe": vals[-1]["im2recipe"], "recipe2im": vals[-1]["recipe2im"]} if vals else None


def one(name: str, seed: int, data: Path, work: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    m = PROBES[name]
    epochs = int(m.overrides["train.epochs"])
    run_dir = work / f"{name.replace(' ', '_')}_s{seed}"
    t0 = time.perf_counter()
    done = run_dir / "train_summary.json"  # a run whose evaluation failed is evaluated again, not retrained
    if done.exists():
        summary = json.loads(done.read_text())
    else:
        summary = train_one(m, seed, data, run_dir, epochs)
        write_text_atomic(done, json.dumps(summary, default=str) + "\n")
    c0 = time.process_time()
    test = evaluate(run_dir, data)
    res = {"probe": name, "preset": m.preset, "overrides": m.overrides, "note": m.note, "seed": seed,
           "data": str(data), "epochs": epochs, "steps": summary["steps"],
           "train_cpu_seconds": summary["cpu_loop"], "run_cpu_seconds": summary["cpu_total"],
           "cpu_s_per_step": round(summary["cpu_loop"] / max(1, summary["steps"]), 4),
           "eval_cpu_seconds": round(time.process_time() - c0, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loss_curves": _curves(run_dir),
           "cpu_note": summary.get("cpu_estimated"), "val": _val(run_dir), "test": test}  # fmt: skip
    write_text_atomic(run_dir / "result.json", json.dumps(res, indent=1) + "\n")
    _log(f"{name} seed {seed}: {summary['cpu_loop']:.0f} CPU-s, val R@1 "
         f"{res['val']['im2recipe']['R@1'] if res['val'] else float('nan'):.1f}, test R@1 {test['im2recipe']['R@1']:.1f}")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "lean")
    p.add_argument("--probe", choices=list(PROBES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="gather WORK/*/result.json into --results")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "malm_lean.json")
    p.add_argument("--profile", type=Path, default=ROOT / "runs" / "lean" / "profile.json",
                   help="benchmarks/malm_lean_profile.py's output, copied into --results")
    args = p.parse_args(argv)
    if args.probe:
        one(args.probe, args.seed, args.data, args.work)
    if args.report:
        from benchmarks.machine import machine_info

        runs = [json.loads(f.read_text()) for f in sorted(args.work.glob("*/result.json"))]
        profile = json.loads(args.profile.read_text()) if args.profile.exists() else None
        doc = {"machine": machine_info(), "profile_cpu_s_per_step": profile, "runs": runs}
        write_text_atomic(args.results, json.dumps(doc, indent=1) + "\n")
        for r in runs:
            print(f"{r['probe']:<26} s{r['seed']} {r['data']:<24} {r['epochs']:>3} ep {r['train_cpu_seconds']:>6.1f} CPU-s "
                  f"({r['cpu_s_per_step']:.3f}/step) val R@1 {r['val']['im2recipe']['R@1']:5.1f} "
                  f"test R@1 {r['test']['im2recipe']['R@1']:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
