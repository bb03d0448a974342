"""`malm demo` end to end at a tiny scale, through the real commands, and its reuse on a rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _demo(cwd: Path) -> subprocess.CompletedProcess[str]:
    # As `make demo` runs it: from the checkout, a *relative* --out, and the CoreML export as a second export
    # into the same bundle (replacing files the first one wrote). An absolute tmp_path hid a crash there.
    # The MALM preset (not the default): its matching head takes the whole re-ranking path, calibration included.
    cmd = [sys.executable, "-m", "malm.cli", "demo", "--out", "runs/demo", "--recipes", "300", "--epochs", "1",
           "--distill-epochs", "1", "--queries", "2", "--preset", "malm-hybrid-tiny"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # 1500 s: on 2 shared cores under load ~13 the first run alone took 727 s wall (63 CPU s).
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=cwd, env=env)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "demo"
    first = _demo(tmp_path)
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
    # MALM on a hybrid (ImageNet stem + tiny ViT) ships its own tower (no student), its int8 models with the
    # linear layers quantized and the stem in float; ImageNet normalisation.
    assert summary["preset"] == "malm-hybrid-tiny" and "student" not in manifest
    assert "linear layers only" in manifest["encoders"]["image_int8"]["quantization"]["scope"]
    assert manifest["preprocess"]["mean"] == [0.485, 0.456, 0.406] and manifest["preprocess"]["size"] == 96
    assert all(len(q["hits"]) == 5 for q in summary["queries"]) and "query_top5" in summary
    assert set(summary["cpu_seconds"]) == set(summary["seconds"])
    whole = summary["whole_index"]  # every test photo against the whole index, as a user's query is
    assert whole["candidates"] == 300 and whole["photos"] >= 2 and 0 <= whole["top1_percent"] <= whole["top5_percent"] <= 100
    # Its matching head ships with the tokens it was trained on; export indexed the recipes and chose the fusion
    # weight on the validation photos through the bundle (or switched re-ranking off, saying why).
    assert "matching_head" in manifest["encoders"] and manifest["rerank"]["kind"] == "matching_head"
    cal = manifest["rerank"]["calibration"]
    assert cal["split"] == "val" and cal["queries"] > 0 and manifest["rerank"]["weight"] == cal["weight"]
    assert manifest["rerank"]["enabled"] or manifest["rerank"]["disabled_reason"]
    sdk = whole["sdk"]  # every test photo through Retriever.search, with and without rerank=True
    assert sdk["weight"] == manifest["rerank"]["weight"] and sdk["threads"] == 1 and "reranked" in sdk
    assert ("added_ms_p50" in sdk) == manifest["rerank"]["enabled"]
    assert all("reranked_hits" in q and len(q["reranked_hits"]) == 5 for q in summary["queries"])
    assert "at random (seed 0)" in summary["shown_photos"]
    page = (out / "report.html").read_text()
    assert page.count("class='query'") == 2 and "data:image/jpeg;base64," in page and "<svg" in page
    assert "id='whole-index'" in page and "id='sdk-rerank'" in page and "id='shown-photos'" in page
    assert page.count("<ol class='reranked'>") == 2

    # The CoreML package went into the same bundle as the ONNX encoders, and every shipped file is readable.
    assert any(e.get("kind") == "coreml" for e in manifest["encoders"].values())
    # The recipe encoder ships like the image encoder (int8, TensorRT-ready, CoreML), with its self-check data.
    assert {"recipe_fp32", "recipe_int8", "recipe_tensorrt", "recipe_coreml"} <= set(manifest["encoders"])
    assert manifest["recipe_selfcheck"]["count"] > 0 and manifest["tokenizer"]["vocab"] == "vocab.json"
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (out / "bundle").rglob("*") if p.name != ".lock")

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("reusing") >= 4  # data, run, encoders, index
    assert "$ malm train" not in second.stderr
    assert "report (open it in a browser)" in second.stderr


def test_the_demo_default_is_the_preset_that_wins_at_equal_cpu() -> None:
    # MALM on the hybrid stem trails H-T + InfoNCE at equal CPU on the demo data and the 10k benchmark
    # (docs/results.md), so the default stays H-T + InfoNCE; `malm demo --preset malm-hybrid-tiny` runs MALM.
    from malm.demo import DemoConfig

    assert DemoConfig(out=Path("x")).preset == "ht-infonce-hybrid-tiny"
