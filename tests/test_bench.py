"""Smoke test of the benchmark code: `malm bench --quick` runs every section and writes its files.

Speed claims are never asserted here (benchmarks/ measures them on purpose-run machines); this only
proves the benchmark itself works, through the real command, with everything under tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_runs_and_writes_results(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--work", str(work)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"

    results = json.loads((out / "bench.json").read_text())
    assert results["mode"] == "quick"
    assert results["machine"]["cpu_usable"] >= 1 and results["machine"]["libraries"]["numpy"]
    sections = results["sections"]
    assert set(sections) == {"peak", "bundle", "latency", "encoder", "cold_start", "training", "index"}
    assert all(s["status"] in ("ok", "skipped") for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    assert results["targets"], "the targets table is written"
    md = (out / "bench.md").read_text()
    assert md.startswith("# malm benchmarks") and "## Targets" in md and "## 3. Index at scale" in md


def test_bench_rejects_bad_options(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "malm.cli", "bench", "--quick", "--only", "nonsense",
                           "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr and "nonsense" in proc.stderr
    assert not (tmp_path / "o" / "bench.json").exists()


def test_bench_outside_a_source_checkout_says_it_needs_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed (non-editable) malm has no benchmarks/ beside it: the command says what to do instead."""
    import malm
    from malm.commands.bench import find_suite
    from malm.errors import MalmError

    monkeypatch.setattr(malm, "__file__", str(tmp_path / "site-packages" / "malm" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MalmError, match="source checkout.*pip install -e"):
        find_suite()
