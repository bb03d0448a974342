"""H-T vs TNLBT vs MALM (image-grounded matching) vs MALM (the paper's matching): equal epochs, several seeds.

    python benchmarks/compare_methods.py --data DIR --epochs 10 --seeds 0 1 2 --jobs 2
    python benchmarks/compare_methods.py --data DIR --calibrate          # CPU seconds per epoch, per method
    python benchmarks/compare_methods.py --data DIR --report-only        # tables from the finished runs
    python benchmarks/compare_methods.py --data DIR --rerank-again       # redo the finished runs' re-ranking

DIR is the procedural benchmark (`malm data synth DIR --recipes 10000 --seed 0`, 128 px photos). Every
(method, seed) trains through the real trainer (`malm.training.train.run`, what `malm train` runs) for the
same number of epochs, 1 torch thread, no DataLoader workers (all work in one process, so process CPU time
is the cost), validation only after the last epoch. Then, on the test split, with the `last` weights:

- 1k image→recipe and recipe→image medR, R@1/5/10 (H-T protocol: 10 seeded 1k subsets, `malm eval`'s code);
  the tables give the mean ± std over seeds of each run's subset mean;
- for the MALM runs, re-ranking each query's global top-`--candidates` with the trained matching head (torch,
  the model's own [CLS] + patch tokens, the same head `rerank/matching_head.onnx` exports): the fused score
  (1 - w) * cosine + w * head score, w chosen on one 1k val subset (all its photos as queries; until the
  session-3 runs, its first 300 photos: `--rerank-again` redoes a finished run's re-ranking that way), then
  applied on the same 10 test subsets;
  and the head's cost per query: its ONNX export (ONNX Runtime, 1 thread) scoring the candidates, p50.

Runs go `--jobs` at a time as separate processes (each 1 thread, `nice`); each writes
`WORK/<method>_s<seed>/result.json`, so a stopped comparison keeps what finished and a rerun skips it.
Results: `benchmarks/results/compare_methods.json` and `.md` (atomic writes), with the machine's CPU features.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation import Method  # noqa: E402  (one method record for both comparisons)
from malm._atomic import write_text_atomic  # noqa: E402
from malm.errors import MalmError  # noqa: E402

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


METHODS = [
    Method("ht-tiny", "ht-tiny", note="H-T: triplet (mean over all B² entries) + recipe self-supervision"),
    Method("tnlbt-tiny", "tnlbt-tiny", note="+ dynamic margin + cross decoder (violating-mean triplet)"),
    Method("malm-tiny", "malm-tiny", note="MALM as the preset ships: ITM with sampled hard negatives, late-interaction "
           "local score, triplet on the whole image"),
    Method("malm-tiny paper", "malm-tiny", {"loss.matching.mode": "paper", "loss.matching.local_score": "decoder"},
           note="MALM, the paper's positive-only matching InfoNCE (decoded global and per-patch)"),
]
# On the pretrained hybrid stem (what the demo trains): H-T with InfoNCE against MALM with InfoNCE. A method's
# own "train.epochs" wins over --epochs, so one comparison holds both the equal-epoch and the equal-CPU runs.
HYBRID_METHODS = [
    Method("ht-infonce-hybrid-tiny", "ht-infonce-hybrid-tiny", note="H-T + CLIP's InfoNCE on the EfficientNet-Lite0 "
           "hybrid (the demo's previous default)"),
    Method("malm-hybrid-tiny", "malm-hybrid-tiny", note="MALM on the hybrid: InfoNCE, late-interaction local score, "
           "75% masking, EMA self-distillation"),
]
BY_NAME = {m.name: m for m in METHODS + HYBRID_METHODS}


def with_epochs(method: Method, epochs: int) -> Method:
    """`method` trained for `epochs` (its own schedule set for that many), named "<name> e<epochs>"."""
    return Method(f"{method.name} e{epochs}", method.preset, {**method.overrides, "train.epochs": epochs}, method.note)


def resolve(name: str) -> Method:
    """A method by name; "<name> e<N>" is that method at N epochs."""
    if name in BY_NAME:
        return BY_NAME[name]
    base, _, tail = name.rpartition(" e")
    if base in BY_NAME and tail.isdigit():
        return with_epochs(BY_NAME[base], int(tail))
    raise KeyError(name)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(method: str, seed: int) -> str:
    return f"{method.replace(' ', '_')}_s{seed}"


# ------------------------------------------------------------------------------------------ one run


def train_one(method: Method, seed: int, data: Path, run_dir: Path, epochs: int, stop_after_steps: int = 0) -> dict:
    """Train one (method, seed); returns the trainer's summary plus process CPU seconds."""
    import shutil

    from malm.training.config import load_preset
    from malm.training.train import TrainOptions, run

    epochs = int(method.overrides.get("train.epochs", epochs))
    cfg = load_preset(method.preset).with_overrides({
        **method.overrides, "train.seed": seed, "train.epochs": epochs, "train.eval_every": epochs,
        "train.num_workers": 0, "train.log_every": 20})  # fmt: skip
    if run_dir.exists():
        shutil.rmtree(run_dir)
    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        if msg.startswith("training ") and "loop" not in marks:  # said right before the first step
            marks["loop"] = time.process_time()

    c0, t0 = time.process_time(), time.perf_counter()
    summary = run(TrainOptions(data_dir=data, out_dir=run_dir, config=cfg, device="cpu", progress_bar=False,
                               stop_after_steps=stop_after_steps, save_every=stop_after_steps, log=log))
    c1 = time.process_time()
    out = {**summary, "cpu_total": round(c1 - c0, 1), "cpu_loop": round(c1 - marks.get("loop", c0), 1),
           "wall_train": round(time.perf_counter() - t0, 1)}
    # kept beside the run, so `--eval-only` can evaluate it again without losing its cost
    write_text_atomic(run_dir / "train_cpu.json", json.dumps(out, default=str) + "\n")
    return out


def _embed(model: Any, ds: Any) -> dict[str, Any]:
    """Image embeddings + [CLS]+patch tokens, recipe embeddings + token features (+ mask) of a split's pairs."""
    import torch
    import torch.nn.functional as F

    img, rec, itok, rtok, rmask = [], [], [], [], []
    with torch.no_grad():  # not inference_mode: the hybrid's frozen-stem memo reads the input's version counter
        for i in range(0, len(ds), 128):
            items = [ds[j] for j in range(i, min(len(ds), i + 128))]
            b = {k: torch.stack([it[k] for it in items]) for k in ("image", "title", "ingredients", "instructions")}
            f = model.image_features(b["image"])
            img.append(model.project_image(f.cls).float())
            itok.append(torch.cat([f.cls.unsqueeze(1), f.tokens], 1).float())
            r = model.recipe_features(b["title"], b["ingredients"], b["instructions"])
            rec.append(F.normalize(r.embedding.float(), dim=-1))
            rtok.append(r.tokens.float())
            rmask.append(r.token_mask.bool())
    return {"img": torch.cat(img).numpy(), "rec": torch.cat(rec).numpy(), "itok": torch.cat(itok),
            "rtok": torch.cat(rtok), "rmask": torch.cat(rmask)}


def _rank_of_true(sims: np.ndarray) -> np.ndarray:
    return 1 + (sims > np.diag(sims)[:, None]).sum(1)


def _head_scores(head: Any, e: dict[str, Any], qrows: np.ndarray, rrows: np.ndarray, chunk: int = 800) -> np.ndarray:
    """Head score of the pairs (image qrows[k], recipe rrows[k]), `chunk` pairs per decoder call."""
    import torch

    out = np.empty(len(qrows), np.float32)
    with torch.inference_mode():
        for a in range(0, len(qrows), chunk):
            q, r = torch.from_numpy(qrows[a:a + chunk]), torch.from_numpy(rrows[a:a + chunk])
            out[a:a + chunk] = head.score(e["itok"][q], e["rtok"][r], e["rmask"][r]).numpy()
    return out


class PairScores:
    """The head's score of (image q, recipe r) over a split, computed once per pair: the 10 test subsets overlap
    (1k of ~1.2k pairs each), so their top-C candidates are mostly the same pairs. `prefetch` scores every
    query's global top-k (which holds its top-C in any subset but for rare cases, computed on demand)."""

    def __init__(self, head: Any, e: dict[str, Any]) -> None:
        self.head, self.e, self.memo = head, e, {}

    def prefetch(self, k: int) -> None:
        sims = self.e["img"] @ self.e["rec"].T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        self.fill(np.repeat(np.arange(len(sims)), top.shape[1]), top.reshape(-1))

    def fill(self, q: np.ndarray, r: np.ndarray) -> None:
        need = [(int(a), int(b)) for a, b in zip(q, r, strict=True) if (int(a), int(b)) not in self.memo]
        if need:
            qa, ra = np.array([a for a, _ in need]), np.array([b for _, b in need])
            self.memo.update(zip(need, _head_scores(self.head, self.e, qa, ra).tolist(), strict=True))

    def __call__(self, idx: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """[len(cand), C] scores of subset query idx[q] with subset candidates idx[cand[q]]."""
        q = np.repeat(idx[:len(cand)], cand.shape[1])
        r = idx[cand].reshape(-1)
        self.fill(q, r)
        return np.array([self.memo[(int(a), int(b))] for a, b in zip(q, r, strict=True)],
                        np.float32).reshape(cand.shape)


def _reranked_ranks(sims: np.ndarray, cand: np.ndarray, local: np.ndarray, w: float) -> np.ndarray:
    """Rank of the true recipe after fusing the head score into each query's top-C (others keep global)."""
    base = _rank_of_true(sims)
    out = base.copy()
    for q in range(len(sims)):
        hit = np.where(cand[q] == q)[0]
        if not len(hit):
            continue  # not among the candidates: re-ranking cannot bring it in
        fused = (1 - w) * sims[q, cand[q]] + w * local[q]
        p = int(hit[0])
        out[q] = 1 + int((fused > fused[p]).sum()) + int(((fused == fused[p]) & (np.arange(len(fused)) < p)).sum())
    return out


def rerank_eval(model: Any, head: Any, val: dict[str, Any], test: dict[str, Any], n_cand: int,
                val_queries: int | None = None) -> dict[str, Any]:
    from malm.evaluation import _subsets, metrics_from_ranks

    def subset(e: dict[str, Any], idx: np.ndarray, scores: PairScores,
               queries: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # the first `queries` photos of the subset against all its recipes (row q's true recipe is column q)
        sims = e["img"][idx[:queries]] @ e["rec"][idx].T
        cand = np.argsort(-sims, axis=1, kind="stable")[:, :n_cand]
        return sims, cand, scores(idx, cand)

    size_v = min(1000, len(val["img"]))
    vidx = _subsets(len(val["img"]), size_v, "ht", np.random.default_rng(0))[0]
    # w is chosen on a 1k val subset, every photo a query: with 300 of them (one photo = 0.33 R@1 points) two
    # seeds of one preset picked w = 0.5 and w = 1.0, and the second lost 0.9 points on test (malm_probes.json)
    vs, vc, vl = subset(val, vidx, PairScores(head, val), queries=val_queries)
    r1 = {w: metrics_from_ranks(_reranked_ranks(vs, vc, vl, w))["R@1"] for w in WEIGHTS}
    w_best = max(WEIGHTS, key=lambda w: (r1[w], -w))
    size = min(1000, len(test["img"]))
    scores = PairScores(head, test)
    scores.prefetch(n_cand + n_cand // 4)
    per_subset: dict[str, list[dict[str, float]]] = {"global": [], "reranked": []}
    for idx in _subsets(len(test["img"]), size, "ht", np.random.default_rng(0)):  # retrieval_metrics' subsets
        ts, tc, tl = subset(test, idx, scores)
        per_subset["global"].append(metrics_from_ranks(_rank_of_true(ts)))
        per_subset["reranked"].append(metrics_from_ranks(_reranked_ranks(ts, tc, tl, w_best)))
    mean = {k: {m: float(np.mean([s[m] for s in v])) for m in v[0]} for k, v in per_subset.items()}
    return {"candidates": n_cand, "weight_chosen_on_val": w_best, "val_R@1_by_weight": r1,
            "val_queries": len(vs), "test": mean,
            "R@1_gain_points": round(mean["reranked"]["R@1"] - mean["global"]["R@1"], 3),
            "pairs_scored": len(scores.memo)}


def head_cost_ms(head: Any, e: dict[str, Any], n_cand: int, queries: int = 60) -> dict[str, float]:
    """p50 ms to score `n_cand` candidates of one query with the head's ONNX export (ONNX Runtime, 1 thread)."""
    import tempfile

    import onnxruntime as ort

    from malm.training.models.matching import export_matching_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "head.onnx")
        export_matching_onnx(head, path, global_token="given")
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        times = []
        n = min(n_cand, len(e["rtok"]))
        for q in range(queries + 5):
            rows = (np.arange(n) + q * 7) % len(e["rtok"])
            feed = {"image_tokens": np.repeat(e["itok"][q % len(e["itok"])][None].numpy(), n, 0),
                    "recipe_tokens": e["rtok"][rows].numpy(), "recipe_mask": e["rmask"][rows].numpy()}
            t0 = time.perf_counter()
            sess.run(["score"], feed)
            if q >= 5:  # warm-up
                times.append(time.perf_counter() - t0)
    return {"p50_ms": round(float(np.median(times)) * 1000, 3), "p90_ms": round(float(np.percentile(times, 90)) * 1000, 3),
            "candidates": n, "threads": 1}


def evaluate_one(run_dir: Path, data: Path, n_cand: int, rerank_only: bool = False) -> dict[str, Any]:
    """Test metrics of a trained run and, with an image-grounded head, its re-ranking; `rerank_only`: only
    {"rerank": ...} (or {} without such a head)."""
    from malm.evaluation import retrieval_metrics
    from malm.export.matching_head import load_trained_head, score_kind
    from malm.training.checkpoint import load_model
    from malm.training.data import RecipeImageDataset, prepare

    loaded = load_model(run_dir, tag="last")
    model, cfg = loaded.model.eval(), loaded.config
    prepared = prepare(data, min_freq=cfg.data.min_freq, limits=cfg.data.limits(), log=lambda _m: None)
    test = _embed(model, RecipeImageDataset(prepared, "test", cfg.preprocess(), train=False))
    out: dict[str, Any] = {}
    if not rerank_only:
        size = min(1000, len(test["img"]))
        m = retrieval_metrics(test["img"], test["rec"], sizes=[size], protocol="ht", seed=0)
        key = next(iter(m["im2recipe"]))
        out = {"size": size, "im2recipe": m["im2recipe"][key], "recipe2im": m["recipe2im"][key]}
    trained = load_trained_head(run_dir, cfg) if n_cand > 0 else None
    if trained is not None and score_kind(trained.module) != "cosine":
        # Image-grounded heads only (ITM / late interaction): the paper head re-ranked at +0.0 R@1 before
        # (docs/ablation.md) and the CPU it would take here is needed for the training runs.
        val = _embed(model, RecipeImageDataset(prepared, "val", cfg.preprocess(), train=False))
        out["rerank"] = rerank_eval(model, trained.module, val, test, n_cand)
        out["rerank"]["score"] = score_kind(trained.module)
        out["rerank"]["cost"] = head_cost_ms(trained.module, test, n_cand)
    return out


def rerank_again(methods: list[Method], seeds: list[int], data: Path, work: Path, n_cand: int) -> None:
    """Redo the re-ranking of every finished (method, seed) with the current `rerank_eval`; rewrites its
    result.json (atomically), keeping the previous re-ranking as `rerank_before`."""
    import torch

    torch.set_num_threads(1)
    for m in methods:
        for s in seeds:
            path = work / slug(m.name, s) / "result.json"
            if not path.exists():
                continue
            res = json.loads(path.read_text())
            new = evaluate_one(path.parent, data, n_cand, rerank_only=True).get("rerank")
            if new is None:
                continue
            if "rerank" in res["test"] and "rerank_before" not in res["test"]:
                res["test"]["rerank_before"] = res["test"]["rerank"]
            res["test"]["rerank"] = new
            write_text_atomic(path, json.dumps(res, indent=1) + "\n")
            _log(f"{m.name} seed {s}: re-ranking gain {new['R@1_gain_points']:+.2f} (w {new['weight_chosen_on_val']})")


def _curves(run_dir: Path) -> dict[str, list[float]]:
    """Each logged loss: mean of the first and of the last 10% of the training log lines."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("type") == "train"]
    if not rows:
        return {}
    k = max(1, len(rows) // 10)
    skip = ("type", "step", "epoch", "lr", "samples_per_s", "data_wait_share")
    out = {}
    for key in (k2 for k2 in rows[0] if k2 not in skip):
        first, last = [r[key] for r in rows[:k] if key in r], [r[key] for r in rows[-k:] if key in r]
        if first and last:
            out[key] = [round(float(np.mean(first)), 4), round(float(np.mean(last)), 4)]
    return out


def one(method: str, seed: int, data: Path, work: Path, epochs: int, n_cand: int, eval_only: bool = False) -> int:
    """Child process: train + evaluate one (method, seed); writes WORK/<slug>/result.json."""
    import torch

    torch.set_num_threads(1)
    m = resolve(method)
    epochs = int(m.overrides.get("train.epochs", epochs))
    run_dir = work / slug(method, seed)
    t0 = time.perf_counter()
    if eval_only:
        summary = json.loads((run_dir / "train_cpu.json").read_text())
    else:
        summary = train_one(m, seed, data, run_dir, epochs)
    c0 = time.process_time()
    ev = evaluate_one(run_dir, data, n_cand)
    res = {"method": method, "seed": seed, "epochs": epochs, "steps": summary["steps"],
           "train_cpu_seconds": summary["cpu_loop"], "run_cpu_seconds": summary["cpu_total"],
           "eval_cpu_seconds": round(time.process_time() - c0, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loss_curves": _curves(run_dir),
           "test": ev}
    write_text_atomic(run_dir / "result.json", json.dumps(res, indent=1) + "\n")
    _log(f"{method} seed {seed}: {epochs} epochs, {summary['cpu_loop']:.0f} CPU s, medR "
         f"{ev['im2recipe']['medR']:.1f} R@1 {ev['im2recipe']['R@1']:.1f}")
    return 0


# ------------------------------------------------------------------------------------------ driver


def calibrate(data: Path, work: Path, steps: int, methods: list[Method]) -> dict[str, Any]:
    """CPU seconds per step and per epoch of each method (after `steps` steps, data preparation excluded)."""
    import torch

    torch.set_num_threads(1)
    out = {}
    for m in methods:
        s = train_one(m, 0, data, work / f"calib_{slug(m.name, 0)}", epochs=1000, stop_after_steps=steps)
        per_step = s["cpu_loop"] / max(1, s["steps"])
        steps_per_epoch = int(round(s["steps"] / s["epochs_done"])) if s.get("epochs_done") else None
        out[m.name] = {"cpu_s_per_step": round(per_step, 4), "steps_per_epoch": steps_per_epoch,
                       "cpu_s_per_epoch": round(per_step * steps_per_epoch, 1) if steps_per_epoch else None}
        _log(f"{m.name}: {out[m.name]}")
    return out


def run_all(args: argparse.Namespace, methods: list[Method]) -> None:
    """Launch the missing (method, seed) runs, `--jobs` at a time, each a nice'd 1-thread child process."""
    todo = [(m.name, s) for s in args.seeds for m in methods
            if not (args.work / slug(m.name, s) / "result.json").exists()]
    running: list[tuple[subprocess.Popen, str]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    while todo or running:
        while todo and len(running) < args.jobs:
            name, seed = todo.pop(0)
            log = args.work / f"{slug(name, seed)}.log"
            cmd = ["nice", "-n", str(args.nice), sys.executable, __file__, "--one", name, str(seed),
                   "--data", str(args.data), "--work", str(args.work), "--epochs", str(args.epochs),
                   "--candidates", str(args.candidates)]
            _log(f"start {name} seed {seed}")
            running.append((subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT),
                            f"{name} seed {seed}"))
        time.sleep(5)
        for proc, label in list(running):
            if proc.poll() is not None:
                running.remove((proc, label))
                _log(f"done {label} (exit {proc.returncode})")
        report(args, methods)  # partial tables as runs finish


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"


def report(args: argparse.Namespace, methods: list[Method]) -> dict[str, Any] | None:
    from benchmarks.machine import machine_info, summary_line

    runs = []
    for m in methods:
        for s in args.seeds:
            p = args.work / slug(m.name, s) / "result.json"
            if p.exists():
                runs.append(json.loads(p.read_text()))
    if not runs:
        return None
    machine = machine_info()
    results = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "data": str(args.data),
               "epochs": args.epochs, "seeds": args.seeds, "candidates": args.candidates,
               "machine": machine, "runs": runs}
    lines = ["# H-T vs TNLBT vs MALM (image-grounded vs paper matching): equal epochs, several seeds", "",
             f"Data: `{args.data}` (procedural benchmark, **not Recipe1M**). {args.epochs} epochs per run, seeds "
             f"{', '.join(map(str, args.seeds))}; test split, 1k image→recipe (H-T protocol: 10 seeded 1k "
             "subsets per run); **mean ± std over seeds** of each run's subset mean (the std is seed-to-seed "
             "training noise). R@K in percent.", "",
             f"Machine: {summary_line(machine)}. 1 torch thread per run, runs {args.jobs} at a time, nice "
             f"{args.nice}; CPU seconds are process CPU time of the training loop (shared machine: wall time "
             "is not comparable).", "",
             "| method | seeds done | im→rec medR | R@1 | R@5 | R@10 | rec→im medR | R@1 | train CPU s / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    summary: dict[str, Any] = {}
    for m in methods:
        rs = by_method.get(m.name, [])
        if not rs:
            continue
        a = [r["test"]["im2recipe"] for r in rs]
        b = [r["test"]["recipe2im"] for r in rs]
        summary[m.name] = {k: [x[k] for x in a] for k in ("medR", "R@1", "R@5", "R@10")}
        lines.append(f"| {m.name} | {len(rs)} | " + " | ".join(_ms([x[k] for x in a]) for k in ("medR", "R@1", "R@5", "R@10"))
                     + f" | {_ms([x['medR'] for x in b])} | {_ms([x['R@1'] for x in b])} | "
                     f"{np.mean([r['train_cpu_seconds'] for r in rs]):.0f} |")
    rr = [(r["method"], r["seed"], r["test"]["rerank"]) for r in runs if "rerank" in r["test"]]
    if rr:
        lines += ["", f"Re-ranking the global top-{args.candidates} with the run's matching head (torch, the model's "
                  "own tokens; fusion weight w chosen on one 1k val subset, queries as given; test = the same 10 "
                  "1k subsets):", "",
                  "| method | seed | head score | w (val queries) | R@1 global | R@1 re-ranked | gain | "
                  "R@5 global → re-ranked | medR global → re-ranked | head cost / query (ONNX, 1 thread, p50) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, seed, x in rr:
            t = x["test"]
            lines.append(f"| {name} | {seed} | {x.get('score', '')} | {x['weight_chosen_on_val']} "
                         f"({x.get('val_queries', 300)}) | {t['global']['R@1']:.2f} | {t['reranked']['R@1']:.2f} | "
                         f"{x['R@1_gain_points']:+.2f} | {t['global']['R@5']:.1f} → {t['reranked']['R@5']:.1f} | "
                         f"{t['global']['medR']:.1f} → {t['reranked']['medR']:.1f} | {x['cost']['p50_ms']:.1f} ms |")
        for name in dict.fromkeys(n for n, _, _ in rr):
            gains = [x["R@1_gain_points"] for n, _, x in rr if n == name]
            lines.append(f"\n{name}: re-ranking gain {_ms(gains)} R@1 points over {len(gains)} seed(s)")
    results["summary"] = summary
    out = args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the procedural benchmark (malm data synth)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "compare", help="run folders (default runs/compare)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", help="subset of: " + ", ".join(BY_NAME) + "; '<name> e<N>': at N epochs")
    p.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    p.add_argument("--nice", type=int, default=5)
    p.add_argument("--candidates", type=int, default=50, help="re-ranked candidates per query (0: no re-ranking)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "compare_methods.json")
    p.add_argument("--calibrate", action="store_true", help="only measure CPU seconds per step / epoch")
    p.add_argument("--calib-steps", type=int, default=15)
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables from finished runs")
    p.add_argument("--rerank-again", action="store_true",
                   help="redo the re-ranking evaluation of the finished runs, then rebuild the tables")
    p.add_argument("--eval-only", action="store_true",
                   help="with --one: evaluate a run trained before (its train_cpu.json) without training it again")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.data / "layer1.json").exists():
        raise MalmError(f"--data {args.data}: no layer1.json (generate it with `malm data synth`)")
    try:
        methods = METHODS if not args.methods else [resolve(n) for n in args.methods]
    except KeyError as e:
        raise MalmError(f"--methods: unknown {e}; known: {', '.join(BY_NAME)} (each also as '<name> e<epochs>')") from e
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        return one(args.one[0], int(args.one[1]), args.data, args.work, args.epochs, args.candidates, args.eval_only)
    if args.calibrate:
        res = calibrate(args.data, args.work, args.calib_steps, methods)
        write_text_atomic(args.work / "calibration.json", json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return 0
    if args.rerank_again:
        rerank_again(methods, args.seeds, args.data, args.work, args.candidates)
    elif not args.report_only:
        run_all(args, methods)
    res = report(args, methods)
    if res is None:
        raise MalmError(f"{args.work}: no finished run to report")
    _log(f"wrote {args.results} and {args.results.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MalmError as e:
        print(f"compare_methods: {e}", file=sys.stderr)
        sys.exit(2)
