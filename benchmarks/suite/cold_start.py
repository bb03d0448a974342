"""`malm query` cold start: process start to first result, in a fresh subprocess each time.

Runs `malm query PHOTO --bundle B --json` (the installed console entry point's code path) against the
largest bundle measured (the 100k-recipe deployment-size bundle in full runs) and times the whole
process, interpreter start to exit after printing. One unmeasured run first, so the numbers are
"cold process, warm page cache" (a reboot-cold disk would add the time to read the bundle's files).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.context import Context, SectionSkipped
from benchmarks.suite.latency import query_photo
from benchmarks.suite.scales import scales

QUERY = [sys.executable, "-m", "malm.cli", "query"]


def _time(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc


def run(ctx: Context) -> dict[str, Any]:
    probe = subprocess.run([*QUERY, "--help"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SectionSkipped(f"`malm query` is not available ({(probe.stderr or probe.stdout).strip()[-200:]})")
    built = scales(ctx)
    if not built:
        raise RuntimeError("no bundle to start from: the index scales were not built (see the model section)")
    target = max(built, key=lambda s: s.recipes)
    photo_bytes, origin = query_photo(ctx)
    photo = ctx.scratch / "query.jpg"
    photo.write_bytes(photo_bytes)
    cmd = [*QUERY, str(photo), "--bundle", str(target.bundle), "--json"]
    runs = 2 if ctx.options.quick else 7
    _, first = _time(cmd)
    if first.returncode != 0:
        raise RuntimeError(f"`malm query` failed (exit {first.returncode}): {(first.stderr or first.stdout)[-500:]}")
    hits = json.loads(first.stdout)["results"][0]["hits"]
    times = []
    for _ in range(runs):
        dt, proc = _time(cmd)
        if proc.returncode != 0:
            raise RuntimeError(f"`malm query` failed (exit {proc.returncode}): {proc.stderr[-500:]}")
        times.append(dt)
    # What the interpreter and imports alone cost, to split start-up from the bundle's load.
    imports = [_time([sys.executable, "-c", "import malm.cli, malm.sdk"])[0] for _ in range(runs)]
    bare = [_time([sys.executable, "-c", "pass"])[0] for _ in range(runs)]
    torch_check = subprocess.run(
        [sys.executable, "-c", "import sys, malm.cli, malm.sdk; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=False).stdout.strip()
    a = np.asarray(times)
    parts = _load_breakdown(target.bundle)
    ctx.log(f"cold start: {target.recipes:,} recipes: p50 {np.median(a):.3f}s p95 {np.percentile(a, 95):.3f}s")
    return {"command": "malm query PHOTO --bundle BUNDLE --json", "bundle": str(target.bundle), "scale": target.key,
            "recipes": target.recipes, "runs": runs, "p50_s": round(float(np.median(a)), 4),
            "p95_s": round(float(np.percentile(a, 95)), 4), "min_s": round(float(a.min()), 4),
            "import_p50_s": round(float(np.median(imports)), 4), "python_p50_s": round(float(np.median(bare)), 4),
            "torch_imported_by_cli": torch_check == "True", "load_breakdown_s": parts, "photo": origin, "hits": len(hits),
            "note": "cold process, warm page cache; " + ("quick run: small bundle" if ctx.options.quick else
                                                         f"{target.key} bundle")}


def _load_breakdown(bundle: Path) -> dict[str, float]:
    """Where `Retriever.load` spends its time (in this process, imports already done): one timing each."""
    from malm.bundle import read_manifest, verify
    from malm.edge_index.hnsw import HnswIndex
    from malm.edge_index.store import RecipeStore
    from malm.sdk.backends import create_backend
    from malm.sdk.bundle_loader import open_bundle

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    verify(bundle, read_manifest(bundle))
    out["verify_sha256"] = time.perf_counter() - t0
    b = open_bundle(bundle, check_hashes=False)
    t0 = time.perf_counter()
    store = RecipeStore.open(b.path(b.index.store))
    labels = store.labels()
    out["store_open_and_labels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    HnswIndex.load(b.path(b.index.file), b.index.settings, labels)
    out["hnsw_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    create_backend(b)
    out["encoder_session"] = time.perf_counter() - t0
    store.close()
    return {k: round(v, 4) for k, v in out.items()}
