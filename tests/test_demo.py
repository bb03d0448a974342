"""`malm demo` end to end at a tiny scale, through the real commands, and its reuse on a rerun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "malm.cli", "demo", "--out", str(out), "--recipes", "300", "--epochs", "1",
           "--distill-epochs", "1", "--queries", "2", "--no-coreml"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    # Every stage left its output: data, a trained run, an evaluation, int8 encoder, index, queries.
    assert (out / "data" / "layer1.json").exists()
    assert (out / "run" / "best.safetensors").exists()
    assert "im2recipe" in summary["teacher_eval"]
    assert {"image_fp32", "image_int8"} <= set(manifest["encoders"])
    assert manifest["index"]["count"] == 300
    assert len(summary["queries"]) == 2 and all(q["ms"] > 0 for q in summary["queries"])
    assert "image_int8" in summary["export_report"]["variants"]

    second = _demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("reusing") >= 4  # data, run, encoders, index
    assert "$ malm train" not in second.stderr
