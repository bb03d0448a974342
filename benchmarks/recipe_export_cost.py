"""What shipping the recipe encoder like the image encoder costs `make demo`'s export: seconds and bytes.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_export_cost.py \
        --run runs/demo/run --data runs/demo/data --base BASE_CHECKOUT --work runs/recipe-export-cost

Runs the demo's two exports (`--target onnx --int8`, then `--target coreml`, `--student none`) of one trained run
twice, one after the other on the same machine: with the code at `--base` (a checkout of the previous release,
e.g. `git archive main | tar -x -C BASE`) and with this checkout. Records wall and CPU seconds of each export
(child rusage), every bundle file's bytes, and the recipe encoder's rows (int8 gate cosine, sizes, the seconds the
export itself logs for the recipe int8 and CoreML steps). `--reuse` summarizes a finished `--work` directory
without exporting again. Writes benchmarks/results/recipe-export-cost.{json,md} with the machine's CPU features.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import machine_info, summary_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (("onnx", ["--target", "onnx", "--int8"]), ("coreml", ["--target", "coreml"]))


def export(code: Path, run: Path, data: Path, bundle: Path, args: list[str], log: Path) -> dict[str, float]:
    # From inside `code`: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    run, data, bundle = run.resolve(), data.resolve(), bundle.resolve()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "malm.cli", "export", "--checkpoint", str(run), "--data", str(data),
                        "--bundle", str(bundle), "--student", "none", *args], stdout=f, stderr=subprocess.STDOUT,
                       env=env, check=True, cwd=code)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)}


def bundle_files(bundle: Path) -> dict[str, int]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {rel: int(e["bytes"]) for rel, e in sorted(manifest["files"].items())}


def recipe_rows(bundle: Path, logs: list[Path]) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = manifest["files"]
    rows = {name: {"file": e["file"], "kind": e.get("kind"), "precision": e.get("precision"),
                   "bytes": files[e["file"]]["bytes"]}
            for name, e in manifest["encoders"].items() if e.get("role") == "recipe"}
    gate = manifest["encoders"].get("recipe_int8", {}).get("gate")
    logged = {}
    for log in logs:
        for what, seconds in re.findall(r"recipe encoder (int8|CoreML): ([\d.]+)s", log.read_text()):
            logged[what] = float(seconds)
    return {"encoders": rows, "int8_gate": gate, "logged_seconds": logged,
            "selfcheck_bytes": sum(v["bytes"] for k, v in files.items() if k.startswith("selfcheck/recipe_"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True, help="checkout of the previous release's code")
    ap.add_argument("--work", type=Path, default=Path("runs/recipe-export-cost"))
    ap.add_argument("--reuse", action="store_true", help="summarize a finished --work directory")
    ap.add_argument("--only", choices=("base", "branch"), help="export this side only (the other from --work)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recipe-export-cost")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    times_file = a.work / "times.json"
    times: dict[str, dict[str, dict[str, float]]] = json.loads(times_file.read_text()) if times_file.is_file() else {}
    if not a.reuse:
        for side, code in (("base", a.base.resolve()), ("branch", ROOT)):
            if a.only and side != a.only:
                continue
            times.pop(side, None)
            bundle = a.work / f"bundle-{side}"
            shutil.rmtree(bundle, ignore_errors=True)
            for name, args in TARGETS:
                times.setdefault(side, {})[name] = export(code, a.run, a.data, bundle, args,
                                                          a.work / f"{side}-{name}.log")
        times_file.write_text(json.dumps(times, indent=1))
    base, branch = (bundle_files(a.work / f"bundle-{s}") for s in ("base", "branch"))
    added = {rel: n for rel, n in branch.items() if rel not in base}
    result = {
        "machine": machine_info(), "procedure": "malm export --target onnx --int8, then --target coreml "
                                                "(--student none), the demo's trained run, base code then this code",
        "seconds": times,
        "added_seconds": {f"{k}_{m}": round(times["branch"][k][m] - times["base"][k][m], 1)
                          for k in ("onnx", "coreml") for m in ("wall_s", "cpu_s")} if times else {},
        "bundle_bytes": {"base": sum(base.values()), "branch": sum(branch.values())},
        "added_files": added, "added_bytes": sum(added.values()),
        "recipe": recipe_rows(a.work / "bundle-branch", [a.work / f"branch-{n}.log" for n, _ in TARGETS]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    a.out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(r: dict[str, Any]) -> str:
    s, rec = r["seconds"], r["recipe"]
    lines = ["# What the recipe encoder's int8 / TensorRT-ready / CoreML variants cost the demo's export", "",
             summary_line(r["machine"]), "", r["procedure"] + ".", "",
             "| export | base wall s | base CPU s | with recipe variants wall s | CPU s |", "|---|---|---|---|---|"]
    for name in ("onnx", "coreml"):
        b, n = s["base"][name], s["branch"][name]
        lines.append(f"| {name} | {b['wall_s']} | {b['cpu_s']} | {n['wall_s']} | {n['cpu_s']} |")
    lines += ["", f"Logged by the export itself: {rec['logged_seconds']} (seconds).", "",
              f"Bundle bytes (without index): base {r['bundle_bytes']['base']:,}, with the recipe variants "
              f"{r['bundle_bytes']['branch']:,} (+{r['added_bytes']:,}).", "", "| added file | bytes |", "|---|---|"]
    lines += [f"| `{rel}` | {n:,} |" for rel, n in r["added_files"].items()]
    gate = rec.get("int8_gate") or {}
    lines += ["", f"recipe_int8 gate: mean cosine to recipe_fp32 {gate.get('cosine_mean_exact')} in exact QDQ math, "
              f"{gate.get('cosine_mean_this_cpu')} on this CPU's kernels, over {gate.get('recipes')} held-out "
              "recipes (pass mark 0.98).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
