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
    # Every section measured something here: "skipped" is not a pass (a skip hid "nothing could be measured").
    assert all(s["status"] == "ok" for s in sections.values()), {k: (s["status"], s.get("error") or s.get("skipped"))
                                                               for k, s in sections.items()}
    assert results["targets"], "the targets table is written"
    phone = sections["latency"].get("phone_photos") or []  # the real-size rows: 12 MP and 3 MP, before / after
    assert sections["latency"]["status"] != "ok" or {(r["photo"][:4], r["decode"]) for r in phone} == {
        ("12MP", "full"), ("12MP", "draft"), ("3MP ", "full"), ("3MP ", "draft")}
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


def _fake_section(name: str, monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    import importlib

    from benchmarks.suite.runner import MODULES

    module = importlib.import_module(f"benchmarks.suite.{MODULES[name]}")
    monkeypatch.setattr(module, "run", lambda ctx: {"value": value})


@pytest.mark.parametrize("section", ["latency", "encoder"])
def test_nothing_measured_is_an_error_not_a_skip(section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When every model scale failed to build, the latency / encoder sections fail and `malm bench` exits 1."""
    from benchmarks.suite import encoder, latency
    from benchmarks.suite.context import BenchOptions
    from benchmarks.suite.runner import failed_sections, run

    for mod in (latency, encoder):
        monkeypatch.setattr(mod, "scales", lambda ctx: [])
        monkeypatch.setattr(mod, "scale_errors", lambda ctx: {"bundle": "export failed: boom"})
    monkeypatch.setattr(latency, "query_photo", lambda ctx: (b"", "none"))
    _fake_section("peak", monkeypatch, 1.0)
    monkeypatch.setattr(encoder, "peak_gflops", lambda section, threads: 1.0)
    results = run(BenchOptions(out=tmp_path / "o", work=tmp_path / "w", quick=True, sections=(section,)))
    entry = results["sections"][section]
    assert entry["status"] == "error" and "could be measured" in entry["error"] and "boom" in entry["error"], entry
    assert failed_sections(results) == [section]


def test_only_merges_with_the_previous_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`malm bench --only S` re-measures S and keeps the other sections of bench.json, with their times."""
    from typer.testing import CliRunner

    from malm.cli import app

    out, work = tmp_path / "o", tmp_path / "w"
    runner = CliRunner()
    _fake_section("peak", monkeypatch, "first")
    _fake_section("bundle", monkeypatch, "first")
    res = runner.invoke(app, ["bench", "--quick", "--only", "peak,bundle", "--out", str(out), "--work", str(work)])
    assert res.exit_code == 0, res.output
    first = json.loads((out / "bench.json").read_text())
    assert set(first["sections"]) == {"peak", "bundle"} and "merged_from" not in first
    _fake_section("peak", monkeypatch, "second")
    _fake_section("bundle", monkeypatch, "second")
    res = runner.invoke(app, ["bench", "--quick", "--only", "bundle", "--out", str(out), "--work", str(work)])
    assert res.exit_code == 0, res.output
    merged = json.loads((out / "bench.json").read_text())
    assert merged["sections"]["bundle"]["value"] == "second"  # re-measured
    assert merged["sections"]["peak"] == first["sections"]["peak"]  # kept as it was, with its own time
    assert merged["merged_from"]["started"] == first["started"]
    # A full (non-quick) run's file is never mixed with a quick one.
    res = runner.invoke(app, ["bench", "--only", "bundle", "--out", str(out), "--work", str(work)])
    assert res.exit_code == 0, res.output
    assert set(json.loads((out / "bench.json").read_text())["sections"]) == {"bundle"}


def _check_training_numbers(section: dict) -> None:
    """Something was measured: every loader rate, step rate, MFU and full-loop number is a positive number."""
    assert section["loader"] and all(x["images_per_s"] > 0 and x["images_per_cpu_s"] > 0 for x in section["loader"])
    assert {x["cached"] for x in section["loader"]} == {True, False}
    assert section["presets"]
    for row in section["presets"]:
        step, loop = row["step"], row["full_loop"]
        assert step["images_per_s"] > 0 and step["gflop_per_image"] > 0 and 0 < step["mfu"] < 1.5 and step["loss_finite"]
        assert loop["images_per_s"] > 0 and 0 <= loop["data_wait_share"] <= 1
        assert loop["epoch_end_s"] is not None and loop["epoch_end_s"] > 0 and 0 < loop["epoch_end_share"] < 1


@pytest.mark.slow
def test_bench_training_section_says_where_the_time_goes(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "malm.cli", "bench", "--quick", "--only", "training", "--device", "cpu",
                           "--out", str(out), "--work", str(work)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    section = json.loads((out / "bench.json").read_text())["sections"]["training"]
    assert section["status"] == "ok", section.get("error") or section.get("skipped")
    assert section["device"] == "cpu" and section["loader_images_per_s_per_core_224"] > 0
    _check_training_numbers(section)
    assert "## 4. Training: where the time goes" in (out / "bench.md").read_text()


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_cpu_and_writes_its_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path / "env-out")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--presets", "ht-tiny",
                           "--recipes", "40", "--work", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "env-out" / "gpu_check.json").read_text())  # $OUT when --out is not given
    assert result["schema"] == "malm-gpu-check/1" and result["device"] == "cpu" and result["tiny"] is True
    assert result["machine"]["cpu_flags"] and result["data"]["recipes"] == 40
    assert [r["preset"] for r in result["presets"]] == ["ht-tiny"]
    _check_training_numbers(result)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "o")],
                          cwd=REPO, env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode != 0 and "no CUDA GPU" in proc.stderr and "--tiny" in proc.stderr
