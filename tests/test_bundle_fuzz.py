"""Hypothesis mutates a real bundle's manifest and its store's rows (benchmarks/fuzz_bundle.py); loading and
searching must work or raise `BundleError`, never another exception, never a crash of the process (the fuzz
runs in a watched child). CI runs a short profile; the long run (5,000 examples) is in docs/reliability.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_malformed_manifests_and_store_rows_are_bundle_errors(tmp_path: Path) -> None:
    n_manifests, n_rows = int(os.environ.get("MALM_FUZZ_MANIFESTS", 80)), int(os.environ.get("MALM_FUZZ_ROWS", 50))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MALM_CACHE_DIR": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-m", "benchmarks.fuzz_bundle", "--manifests", str(n_manifests), "--rows",
                          str(n_rows), "--seed", "3", "--out", str(tmp_path / "fuzz")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "fuzz" / "summary.json").read_text())
    assert summary["failures"] == [] and summary["crashes"] == 0
    assert summary["examples"] == {"manifest": n_manifests, "store": n_rows}
    assert not any(":other:" in k for k in summary["outcomes"])
    # Both outcomes occur: the mutations are neither all harmless nor all refused by the first check.
    assert summary["outcomes"].get("manifest:worked", 0) > 0 and summary["outcomes"]["manifest:bundle_error"] > 0
