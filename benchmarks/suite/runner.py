"""Run the benchmark sections in order, keep going past a failed one, write JSON + Markdown after each."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import traceback
from typing import Any

from benchmarks import report
from benchmarks.machine import machine_info, summary_line
from benchmarks.suite import targets
from benchmarks.suite.context import SECTIONS, BenchOptions, Context, SectionSkipped
from malm.progress import progress

SCHEMA = "malm-bench/1"
# section name -> module in benchmarks.suite; cheap sections first so a late failure keeps them.
MODULES = {"peak": "peak", "bundle": "bundle_size", "latency": "latency", "encoder": "encoder",
           "cold_start": "cold_start", "training": "training", "index": "index_scale"}
assert tuple(MODULES) == SECTIONS


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the chosen sections; returns the results (also written to `options.out`).

    Running a subset (`--only`) keeps the other sections of an existing `bench.json` in the same
    folder, each with the time it was measured, so one section can be re-measured without the rest.
    """
    ctx = Context(options)
    machine = machine_info()
    ctx.log(f"machine: {summary_line(machine)}")
    results: dict[str, Any] = {"schema": SCHEMA, "command": options.command, "mode": "quick" if options.quick else "full",
                               "started": _now(), "machine": machine, "sections": {}}
    if set(options.sections) != set(SECTIONS):
        previous = report.load(options.out)
        if previous and previous.get("schema") == SCHEMA and previous.get("mode") == results["mode"]:
            results["sections"] = dict(previous.get("sections", {}))
            results["merged_from"] = {"started": previous.get("started"), "command": previous.get("command"),
                                      "machine": previous.get("machine")}
    chosen = [name for name in SECTIONS if name in options.sections]
    # One bar over the sections (malm.progress, stderr); the sections' own log lines print above it.
    with progress("bench", total=len(chosen)) as bar:
        for name in chosen:
            _run_section(name, ctx, results)
            bar.advance()
    return results


def _run_section(name: str, ctx: Context, results: dict[str, Any]) -> None:
    ctx.log(f"== {name} ==")
    start = ctx.elapsed()
    entry: dict[str, Any]
    try:
        module = importlib.import_module(f"benchmarks.suite.{MODULES[name]}")
        entry = {"status": "ok", **module.run(ctx)}
    except SectionSkipped as e:
        entry = {"status": "skipped", "skipped": str(e)}
        ctx.log(f"{name}: skipped: {e}")
    except Exception as e:  # one broken section must not lose the others' numbers
        entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        ctx.log(f"{name}: FAILED: {type(e).__name__}: {e}")
    entry["seconds"] = round(ctx.elapsed() - start, 2)
    entry["measured"] = _now()
    # Other work on the machine during the section (1/5/15-minute load averages at its end).
    entry["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    results["sections"][name] = entry
    _finish(results, ctx)


def _finish(results: dict[str, Any], ctx: Context) -> None:
    if ctx._artifacts is not None:
        results["artifacts"] = ctx._artifacts.describe()
    results["finished"] = _now()
    results["duration_s"] = round(ctx.elapsed(), 1)
    results["targets"] = targets.evaluate(results)
    report.write(results, ctx.options.out)


def failed_sections(results: dict[str, Any]) -> list[str]:
    return [k for k, v in results.get("sections", {}).items() if isinstance(v, dict) and v.get("status") == "error"]
