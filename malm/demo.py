"""The embedded default: the whole pipeline end to end on 2 CPU cores (what `make demo` runs).

    malm demo --out runs/demo

generate the procedural benchmark → train `malm-hybrid-tiny` (frozen ImageNet EfficientNet-Lite0 stem + tiny
ViT, H-T's recipe transformer, MALM's masking, EMA self-distillation and local matching head)
→ evaluate (Recipe1M protocol) → export the image encoder as int8 ONNX (and CoreML) into a bundle (the
teacher's own tower, or with --student efficientnet-lite0 a distilled student), with the matching head; the
export indexes the recipes and chooses the re-ranking weight on validation photos through the bundle → query
held-out test photos through the SDK with and without re-ranking → summary.json and report.html
(`malm.demo_report`). Each step
runs the real `malm` command in a subprocess (so the demo shows exactly what a user would type) and is skipped when its output is already complete, so a rerun reuses what is done
and a killed demo picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm.demo_report import write_report
from malm.errors import MalmError
from malm.recipe1m import load_recipe1m


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    recipes: int = 3000  # benchmark size: ~350 test pairs
    seed: int = 0
    # Frozen ImageNet EfficientNet-Lite0 stem + tiny ViT trained with InfoNCE; its stem runs once per photo
    # (train.stem_cache). It beats MALM's objectives on the same stem at equal CPU (docs/results.md);
    # `--preset malm-hybrid-tiny` runs MALM, whose matching head re-ranks on the device (calibrated at export).
    preset: str = "ht-infonce-hybrid-tiny"
    epochs: int | None = None  # None: the preset's own
    distill_epochs: int = 2  # with --student efficientnet-lite0
    coreml: bool = True
    queries: int = 5  # held-out test photos shown with their top 5 (a seeded random sample, `seed`)
    eval_size: int = 500  # validation pairs during training (all of them when fewer)
    # The exported image encoder: "none" ships the teacher's own hybrid tower (2.8 MB fp32; int8 with its
    # transformer's linear layers quantized and the stem in float), which keeps the teacher's accuracy and
    # needs no distillation; "efficientnet-lite0" distils the edge student (fully int8, but on 2 CPU cores
    # a few distillation epochs leave it far below the teacher: README, docs/ablation.md).
    student: str = "none"

    def __post_init__(self) -> None:
        if self.recipes < 300:
            raise MalmError(f"demo: --recipes {self.recipes} is too few for a test split (need ≥ 300)")
        if self.queries < 1:
            raise MalmError("demo: --queries must be ≥ 1")
        if self.student not in ("none", "efficientnet-lite0"):
            raise MalmError(f"demo: --student must be none or efficientnet-lite0, got {self.student!r}")


Log = Callable[[str], None]


def _malm(args: list[str], log: Log, capture: bool = False) -> str:
    """Run one real `malm` command; its progress goes to our stderr, its stdout is returned if captured."""
    cmd = [sys.executable, "-m", "malm.cli", *args]
    log("$ malm " + " ".join(shlex.quote(a) for a in args))
    # One torch thread unless the user says otherwise: the tiny models gain little from a second one, and with
    # any other load on the cores, OpenMP's spinning threads made training ~5x slower (measured: 4.5 vs 22
    # samples/s under load ~5 on 2 cores).
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, stdout=subprocess.PIPE if capture else sys.stderr, text=True, env=env)
    if result.returncode != 0:
        raise MalmError(f"demo: step `malm {args[0]}` failed with exit status {result.returncode} (see above)")
    return result.stdout if capture else ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _training_done(run: Path, epochs: int | None) -> bool:
    last = _read_json(run / "last.json")
    config = _read_json(run / "config.json")
    if not last or not config or not (run / "best.safetensors").exists():
        return False
    target = epochs if epochs is not None else config.get("train", {}).get("epochs")
    return bool(target) and last.get("epoch", 0) >= target


def run_demo(cfg: DemoConfig, log: Log) -> dict[str, Any]:
    out = cfg.out
    data, run, bundle = out / "data", out / "run", out / "bundle"
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        log(f"\n== {name} ==")

        def done() -> None:
            timings[name] = round(time.perf_counter() - t0, 1)
            cpu[name] = round(_cpu_seconds() - c0, 1)  # on a shared machine, wall time says little

        return done

    done = step("1. procedural food benchmark")
    _generate_benchmark(cfg, data, log)
    done()

    done = step(f"2. train {cfg.preset}")
    _train(cfg, data, run, log)
    _plot_curves(run, log)
    done()

    done = step("3. evaluate (Recipe1M protocol, test split)")
    evaluation = _evaluate(out, data, run, log)
    done()

    what = "the teacher's own image tower" if cfg.student == "none" else "distilled student"
    done = step(f"4. export: {what}, int8 ONNX" + (" and CoreML" if cfg.coreml else ""))
    _export(cfg, data, run, bundle, log)
    done()

    done = step("5. recipe index")
    _build_index(data, run, bundle, log)
    done()

    done = step("6. query held-out test photos")
    queries, whole_index = _query_test_photos(cfg, data, bundle, log)
    done()

    summary = _summary(cfg, bundle, evaluation, queries, timings)
    summary["whole_index"] = whole_index
    summary["cpu_seconds"] = cpu
    summary["oracle"] = oracle_ceiling(data, evaluation)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    report = write_report(out / "report.html", summary, run / "metrics.jsonl")
    log("\n== summary ==")
    log(_format_summary(summary))
    log(f"report (open it in a browser): {report}")
    return summary


def _generate_benchmark(cfg: DemoConfig, data: Path, log: Log) -> None:
    """Step 1: the procedural benchmark, unless a complete one is already there."""
    if (data / "synth.json").exists() and (data / "layer1.json").exists():
        log(f"reusing {data}")
    else:
        _malm(["data", "synth", str(data), "--recipes", str(cfg.recipes), "--seed", str(cfg.seed), "--force"], log)


def _train(cfg: DemoConfig, data: Path, run: Path, log: Log) -> None:
    """Step 2: train (or resume) the preset, unless the run already reached its epochs."""
    if _training_done(run, cfg.epochs):
        log(f"reusing {run}")
        return
    args = ["train", "--data", str(data), "--out", str(run), "--eval-size", str(cfg.eval_size)]
    if (run / "last.state.json").exists():
        args.append("--resume")
    else:
        args += ["--preset", cfg.preset]
    if cfg.epochs is not None:
        args += ["--epochs", str(cfg.epochs)]
    _malm(args, log)


def _evaluate(out: Path, data: Path, run: Path, log: Log) -> dict[str, Any]:
    """Step 3: the Recipe1M protocol on the test split (reused from eval.json when there), logged as a table."""
    evaluation_file = out / "eval.json"
    evaluation = _read_json(evaluation_file)
    if evaluation is None:
        # No --size: 1k is used when the test split has 1k pairs, else all of them (with a note).
        text = _malm(["eval", "--checkpoint", str(run), "--data", str(data), "--split", "test", "--json"],
                     log, capture=True)
        evaluation = json.loads(text)
        evaluation_file.write_text(json.dumps(evaluation, indent=2))
    # on use only: keeps numpy out of the command line's start
    from malm.evaluation import format_table

    log(format_table(evaluation))
    return evaluation


def _export(cfg: DemoConfig, data: Path, run: Path, bundle: Path, log: Log) -> None:
    """Step 4: the int8 ONNX image encoder (and CoreML) into the bundle, each unless already exported."""
    student = cfg.student
    student_args = ["--student", "none"] if student == "none" else ["--distill-epochs", str(cfg.distill_epochs)]
    manifest = _read_json(bundle / "manifest.json") or {}
    if "image_int8" not in manifest.get("encoders", {}):
        _malm(["export", "--checkpoint", str(run), "--target", "onnx", "--int8", "--data", str(data),
               "--bundle", str(bundle), *student_args], log)
    else:
        log(f"reusing the ONNX encoders in {bundle}")
    manifest = _read_json(bundle / "manifest.json") or {}
    if cfg.coreml and not any(e.get("kind") == "coreml" for e in manifest.get("encoders", {}).values()):
        _malm(["export", "--checkpoint", str(run), "--target", "coreml", "--data", str(data),
               "--bundle", str(bundle), *student_args], log)


def _build_index(data: Path, run: Path, bundle: Path, log: Log) -> None:
    """Step 5: the recipe index in the bundle, unless it has one."""
    manifest = _read_json(bundle / "manifest.json") or {}
    if not manifest.get("index"):
        _malm(["index", "build", "--checkpoint", str(run), "--recipes", str(data), "--bundle", str(bundle)], log)
    else:
        log(f"reusing the index in {bundle}")


def oracle_ceiling(data: Path, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The ingredient oracle's R@1 on the same test pairs (`benchmarks/oracle.py`: what a perfect ingredient
    recogniser reaches, ties in expectation) and the model's R@1 as a fraction of it; a note instead when
    the data has no drawn-ingredients log (generated by an older `malm data synth`)."""
    # on use only: keeps numpy and Pillow out of the command line's start
    from malm.training.synth.oracle import IngredientOracle, fraction_of_ceiling

    try:
        res = IngredientOracle.load(data).evaluate("test", size=None)
    except MalmError as e:
        return {"note": str(e)}
    first: dict[str, Any] = next(iter(evaluation.get("im2recipe", {}).values()), {})
    model_r1 = first.get("R@1")
    ceiling = res["expected"]["R@1"]
    return {"R@1": round(ceiling, 1), "R@1_pessimistic": round(res["pessimistic"]["R@1"], 1), "pairs": res["pairs"],
            "model_R@1": model_r1,
            "fraction": round(fraction_of_ceiling(model_r1, ceiling), 3) if model_r1 is not None else None}


def _plot_curves(run: Path, log: Log) -> None:
    """The training curves as PNGs beside the run (`malm plot`), when matplotlib (malm[plot]) is installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("(training curves: pip install 'malm[plot]' and run `malm plot` to draw them)")
        return
    _malm(["plot", str(run)], log)


def _cpu_seconds() -> float:
    """CPU time of this process and of the finished `malm` subprocesses it waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _test_photos(data: Path) -> list[tuple[Path, str, str]]:
    """Every test recipe that has a photo: (its first photo, recipe id, title), in the data's order."""
    return [(Path(r.image_paths[0]), r.id, r.title) for r in load_recipe1m(data).recipes
            if r.partition == "test" and r.image_paths]


def shown_photos(everything: list[tuple[Path, str, str]], n: int, seed: int) -> list[tuple[Path, str, str]]:
    """The photos the report shows: a seeded random sample (not the first few, not the best few)."""
    return random.Random(seed).sample(everything, min(n, len(everything)))


def _rank(hits: list[dict[str, Any]], true_id: str) -> int | None:
    return next((i + 1 for i, h in enumerate(hits) if h["recipe_id"] == true_id), None)


def _query_test_photos(cfg: DemoConfig, data: Path, bundle: Path, log: Log) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The shown photos' top 5 before and after re-ranking, and every test photo through the SDK against the
    bundle's whole index (train, val and test recipes: what a user's query meets, unlike the Recipe1M
    protocol, which ranks among the test pairs only), with and without re-ranking, on 1 thread."""
    # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
    from malm.sdk import Retriever
    from malm.sdk.measure import measure, rerank_comparison

    everything = _test_photos(data)
    retriever = Retriever.load(bundle, threads=1)
    rr = retriever.bundle.sections.rerank
    results = []
    for photo, true_id, true_title in shown_photos(everything, cfg.queries, cfg.seed):
        t0 = time.perf_counter()
        hits = [h.to_dict() for h in retriever.search(photo, k=5)]
        ms = (time.perf_counter() - t0) * 1000
        entry: dict[str, Any] = {"photo": str(photo), "recipe_id": true_id, "title": true_title,
                                 "rank": _rank(hits, true_id), "ms": round(ms, 1), "hits": hits}
        if retriever.can_rerank:
            entry["reranked_hits"] = [h.to_dict() for h in retriever.search(photo, k=5, rerank=True)]
        elif rr is not None:  # off in this bundle: what it would have given, from the SDK's own scores
            cand = retriever.candidate_scores([photo])[0]
            if not isinstance(cand, Exception):
                order = cand.order(rr.weight)[:5]
                entry["reranked_hits"] = _records(retriever, order)
        if "reranked_hits" in entry:
            entry["reranked_rank"] = _rank(entry["reranked_hits"], true_id)
        log(f"\n{photo.name}  (true recipe: {true_title}; found at rank {entry['rank'] or '>5'}"
            + (f", re-ranked {entry['reranked_rank'] or '>5'}" if "reranked_hits" in entry else "") + f"; {ms:.0f} ms)")
        for i, h in enumerate(hits, 1):
            log(f"  {i}. {h['score']:+.3f}  {h['title']}" + ("  ✔" if h["recipe_id"] == true_id else ""))
        results.append(entry)
    photos, truth = [str(p) for p, _, _ in everything], [t for _, t, _ in everything]
    if rr is not None:
        sdk = rerank_comparison(retriever, photos, truth, k=5)
        sdk["threads"] = 1
        g = sdk["global"]
    else:
        m = measure(retriever, photos, truth, k=5)
        g = {"top1_percent": m.recall["R@1"], "top5_percent": m.recall["R@5"]}
        sdk = {"photos": len(photos), "enabled": False, "note": "the bundle has no re-ranking data", "global": g}
    whole = {"photos": len(photos), "candidates": len(retriever), "top1_percent": round(g["top1_percent"], 1),
             "top5_percent": round(g["top5_percent"], 1), "variant": retriever.backend.variant, "sdk": sdk}
    log(f"\nall {whole['photos']} test photos against the whole index ({whole['candidates']} recipes, "
        f"{whole['variant']} encoder): true recipe at rank 1 for {whole['top1_percent']}%, in the top 5 for "
        f"{whole['top5_percent']}%")
    if "reranked" in sdk:
        log(f"with re-ranking (weight {sdk['weight']}{'' if sdk['enabled'] else ', off in this bundle'}): rank 1 "
            f"for {sdk['reranked']['top1_percent']}%, top 5 for {sdk['reranked']['top5_percent']}%"
            + (f"; +{sdk['added_ms_p50']} ms per query (p50 wall, 1 thread; {sdk.get('added_cpu_ms_p50')} ms CPU)"
               if "added_ms_p50" in sdk else ""))
    retriever.close()
    return results, whole


def _records(retriever: Any, ids: list[str]) -> list[dict[str, Any]]:
    """Hit-like dicts (id, title, ingredients; no score) for recipe ids, from the bundle's recipe store."""
    # on use only: keeps sqlite3 and numpy out of the command line's start
    from malm.edge_index.store import RecipeStore

    with RecipeStore.open(retriever.bundle.path(retriever.bundle.index.store)) as store:
        labels = store.labels_for_ids(ids)
        records = {r.id: r for r in store.get([labels[i] for i in ids if i in labels]).values()}
    return [{"recipe_id": i, "title": records[i].title, "ingredients": list(records[i].ingredients)}
            for i in ids if i in records]


def _bundle_bytes(bundle: Path) -> int:
    manifest = _read_json(bundle / "manifest.json") or {}
    return sum(int(f.get("bytes", 0)) for f in manifest.get("files", {}).values())


def _summary(cfg: DemoConfig, bundle: Path, evaluation: dict[str, Any], queries: list[dict[str, Any]],
             timings: dict[str, float]) -> dict[str, Any]:
    report = _read_json(bundle / "report.json") or {}
    found = [q for q in queries if q["rank"] == 1]
    in_top5 = [q for q in queries if q["rank"]]
    return {
        "benchmark": f"procedural food benchmark, {cfg.recipes} recipes, seed {cfg.seed} (not Recipe1M)",
        "preset": cfg.preset,
        "shown_photos": f"{len(queries)} test photos drawn at random (seed {cfg.seed}) from all test recipes with "
                        "a photo, before their results were seen",
        "teacher_eval": evaluation,
        "export_report": report,
        "queries": queries,
        "query_top1": f"{len(found)}/{len(queries)}",
        "query_top5": f"{len(in_top5)}/{len(queries)}",
        "bundle_mb": round(_bundle_bytes(bundle) / 1e6, 2),
        "seconds": timings,
    }


def _format_summary(summary: dict[str, Any]) -> str:
    report = summary["export_report"]
    lines = [summary["benchmark"], f"model: {summary['preset']}",
             f"image→recipe on {report.get('eval_pairs', '?')} test pairs (all of them, one subset):",
             f"  {'variant':20s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'medR':>6s} {'MB':>7s} {'ms (1 thread)':>14s}"]

    def cell(v: Any, fmt: str = "{:.1f}") -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else "–"

    for name, v in report.get("variants", {}).items():
        if name.startswith("recipe"):
            continue
        q = v.get("retrieval") or {}
        lines.append(f"  {name:20s} {cell(q.get('R@1')):>6s} {cell(q.get('R@5')):>6s} {cell(q.get('R@10')):>6s} "
                     f"{cell(q.get('medR')):>6s} {cell(v.get('size_mb'), '{:.2f}'):>7s} "
                     f"{cell(v.get('latency_ms_1t'), '{:.2f}'):>14s}")
    lines.append(f"held-out photos with the true recipe at rank 1: {summary['query_top1']}, "
                 f"in the top 5: {summary.get('query_top5', '?')}")
    whole = summary.get("whole_index")
    if whole:
        lines.append(f"all {whole['photos']} test photos against the whole index ({whole['candidates']} recipes, "
                     f"not only the test pairs): rank 1 for {whole['top1_percent']}%, top 5 for "
                     f"{whole['top5_percent']}%")
        sdk = whole.get("sdk") or {}
        if "reranked" in sdk:
            lines.append(f"  with re-ranking (weight {sdk['weight']}"
                         f"{'' if sdk['enabled'] else ', off in this bundle: ' + str(sdk.get('note'))}): rank 1 for "
                         f"{sdk['reranked']['top1_percent']}%, top 5 for {sdk['reranked']['top5_percent']}%"
                         + (f", +{sdk['added_ms_p50']} ms per query (1 thread; {sdk.get('added_cpu_ms_p50')} ms CPU)"
                            if "added_ms_p50" in sdk else ""))
    oracle = summary.get("oracle") or {}
    if oracle.get("fraction") is not None:
        lines.append(f"ingredient oracle (a perfect ingredient recogniser) on the same pairs: R@1 {oracle['R@1']}; "
                     f"the model's R@1 {oracle['model_R@1']:.1f} is {100 * oracle['fraction']:.0f}% of it")
    lines.append(f"bundle: {summary['bundle_mb']} MB (manifest + encoders + index + recipe store)")
    lines.append("seconds per step: " + ", ".join(f"{k.split('.')[0]}={v}" for k, v in summary["seconds"].items()))
    if summary.get("cpu_seconds"):
        lines.append("CPU seconds per step: " + ", ".join(f"{k.split('.')[0]}={v}"
                                                          for k, v in summary["cpu_seconds"].items()))
    return "\n".join(lines)
