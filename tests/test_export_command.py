"""`malm export` end to end on a tiny trained checkpoint, through the real command, read back with ONNX Runtime."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from malm import cpu
from malm.bundle import read_manifest, verify
from malm.cli import app
from malm.errors import MalmError
from malm.export import onnx_export as ox
from malm.export.int8_gate import MIN_COSINE
from malm.export.quantize import exact_session, qdq_properties
from malm.preprocess import PreprocessConfig, preprocess
from malm.text import TextLimits, encode_recipe
from malm.training.checkpoint import load_model

pytestmark = pytest.mark.slow


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, args, catch_exceptions=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, make_dataset: Callable[..., Path],
        tiny_config: Callable[..., Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "data", n_train=24, n_val=4, n_test=12)
    out = root / "run"
    res = _invoke(["train", "--no-progress", "--data", str(data), "--preset",
                   str(tiny_config(root / "c.json", epochs=1)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return {"data": data, "run": out, "bundle": root / "bundle", "root": root}


def _export(run: dict[str, Path], *extra: str, bundle: Path | None = None) -> Any:
    return _invoke(["export", "--checkpoint", str(run["run"]), "--data", str(run["data"]),
                    "--bundle", str(bundle or run["bundle"]), "--distill-epochs", "1", *extra])


@pytest.fixture(scope="module")
def onnx_bundle(run: dict[str, Path]) -> dict[str, Any]:
    res = _export(run, "--target", "onnx", "--int8", "--calib-images", "16", "--tokens", "--eval-images", "12",
                  "--json")
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return json.loads(res.stdout)


def test_onnx_bundle_runs_in_onnx_runtime(run: dict[str, Path], onnx_bundle: dict[str, Any]) -> None:
    bundle = run["bundle"]
    manifest = verify(bundle)
    assert {"image_fp32", "image_int8", "recipe_fp32"} <= set(manifest["encoders"])
    assert manifest["embedding"] == {"dim": 16, "metric": "cosine"}
    pp = PreprocessConfig.from_dict(manifest["preprocess"])
    assert pp.size == 32
    assert (bundle / "vocab.json").read_text() == (run["run"] / "vocab.json").read_text()
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["libraries"])

    entry = manifest["encoders"]["image_fp32"]
    assert entry["opset"] >= 17 and entry["inputs"]["image"]["shape"] == ["batch", 3, 32, 32]
    assert entry["outputs"]["embedding"]["shape"] == ["batch", 16] and entry["parity_min_cosine"] >= 0.9999
    meta = {p.key: p.value for p in onnx.load(str(bundle / entry["file"])).metadata_props}
    assert meta["model_hash"] == entry["model_hash"] == manifest["model"]["encoder_hash"]
    assert json.loads(meta["config"])["name"] == "test-tiny"

    photos = sorted((run["data"] / "images" / "test").rglob("*.jpg"))[:5]
    x = np.stack([preprocess(Image.open(p), pp) for p in photos])
    emb, tokens = ox.session(bundle / entry["file"]).run(None, {"image": x})
    assert emb.shape == (5, 16) and tokens.shape == (5, 1, 32)  # 32 px → 1x1 grid of ViT-width tokens
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # int8 within the export gate's bound in exact QDQ math (TensorRT, VNNI, ARM) and, unless this is an x86
    # without VNNI (where the SDK's self-check falls back), with this CPU's kernels too.
    for rel in ("encoders/image_int8.onnx", "encoders/image_int8_cpu.onnx"):
        exact = exact_session(bundle / rel).run(["embedding"], {"image": x})[0]
        assert ox.cosine_rows(emb, exact).mean() >= MIN_COSINE and not np.allclose(emb, exact, atol=1e-4), rel
        here = ox.cosine_rows(emb, ox.session(bundle / rel).run(["embedding"], {"image": x})[0]).mean()
        assert here >= MIN_COSINE or cpu.int8_may_saturate(), f"{rel}: {here:.4f} on {cpu.description()}"
    gate = onnx_bundle["int8_gate"]
    assert gate["cpu"] == cpu.description() and not gate["accepted"] and not gate["failures"]
    assert set(gate["variants"]) == {"image_int8", "image_int8_cpu", "recipe_int8"}  # recipe: malm/export/recipe.py
    assert f"measured on {cpu.description()}" in (bundle / "report.md").read_text()
    # The self-check data travels with the bundle: inputs and their fp32 embeddings, hashed like every file.
    sc = manifest["selfcheck"]
    assert {sc["inputs"], sc["fp32_embeddings"]} <= set(manifest["files"]) and sc["min_cosine"] == MIN_COSINE
    ref_x = np.load(bundle / sc["inputs"]).astype(np.float32)
    ref_emb = ox.session(bundle / entry["file"]).run(["embedding"], {"image": ref_x})[0]
    assert sc["count"] == len(ref_x) == 8 and np.allclose(np.load(bundle / sc["fp32_embeddings"]), ref_emb, atol=1e-5)

    props = qdq_properties(bundle / "encoders/image_int8.onnx")
    assert props["all_zero_points_zero"] and props["per_channel_scales"] > 0
    assert manifest["encoders"]["image_int8"]["quantization"]["calibration_images"] == 16
    # The CPU variant: same calibration, uint8 activations, int8 symmetric weights.
    cpu_entry = manifest["encoders"]["image_int8_cpu"]
    assert cpu_entry["file"] == "encoders/image_int8_cpu.onnx" and cpu_entry["quantization"]["calibration_images"] == 16
    assert cpu_entry["quantization"]["activation_zero_point_types"] == ["uint8"]
    assert cpu_entry["quantization"]["weight_zero_points_zero"]
    # ht-tiny trains no matching head: --tokens says so instead of shipping one.
    assert "matching_head" not in manifest["encoders"]
    assert any("no trained matching head" in n for n in onnx_bundle["notes"])

    # The recipe encoder: vocab tokens in, the teacher's embedding out.
    teacher = load_model(run["run"])
    limits = teacher.config.data.limits()
    assert isinstance(limits, TextLimits)
    toks = encode_recipe("tomato pasta", ["1 cups tomato", "2 cups pasta"], ["cook the pasta well ."],
                         teacher.vocab, limits)
    feeds = {k: v[None].astype(np.int64) for k, v in toks.items()}
    got = ox.session(bundle / "encoders/recipe_fp32.onnx").run(["embedding"], feeds)[0]
    with torch.no_grad():
        ref = teacher.model.encode_recipe(*(torch.from_numpy(feeds[k]) for k in ("title", "ingredients",
                                                                               "instructions"))).numpy()
    assert ox.cosine_rows(ref, got)[0] > 0.9999


def test_report_has_each_variant(run: dict[str, Path], onnx_bundle: dict[str, Any]) -> None:
    variants = onnx_bundle["variants"]
    assert {"teacher_torch_fp32", "student_torch_fp32", "image_fp32", "image_int8"} <= set(variants)
    manifest = read_manifest(run["bundle"])
    for name in ("image_fp32", "image_int8", "image_int8_cpu"):
        row = variants[name]
        # The size is the file's, as written in the bundle (not merely positive).
        size = (run["bundle"] / manifest["encoders"][name]["file"]).stat().st_size
        assert row["size_mb"] == round(size / 1e6, 3), (name, row["size_mb"], size)
        assert row["latency_ms_1t"] > 0 and row["latency_ms_2t"] > 0
        assert -1 <= row["cosine_to_teacher"] <= 1
        r = row["retrieval"]
        assert set(r) >= {"medR", "R@1", "R@5", "R@10"} and r["n"] == 12
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100 and 1 <= r["medR"] <= 12
    # The fp32 ONNX is the student with parity >= 0.9999 (README): its cosine to the teacher and its ranking
    # are the torch student's, to rounding (at most one of the 12 pairs may swap on a near tie).
    student, fp32 = variants["student_torch_fp32"], variants["image_fp32"]
    assert abs(fp32["cosine_to_teacher"] - student["cosine_to_teacher"]) < 2e-3, (fp32, student)
    assert abs(fp32["retrieval"]["R@1"] - student["retrieval"]["R@1"]) <= 100 / 12 + 0.01
    assert "R@1_drop_vs_fp32" in variants["image_int8"]
    assert variants["image_int8"]["size_mb"] < variants["image_fp32"]["size_mb"] / 3
    report = json.loads((run["bundle"] / "report.json").read_text())
    assert report["variants"]["image_fp32"] == variants["image_fp32"]
    assert "| image_int8 |" in (run["bundle"] / "report.md").read_text()
    assert read_manifest(run["bundle"])["quality"]["image_int8"]["size_mb"] == variants["image_int8"]["size_mb"]


def test_coreml_reuses_the_distilled_student(run: dict[str, Path], onnx_bundle: dict[str, Any]) -> None:
    pytest.importorskip("coremltools", reason="coremltools is in malm[export]")
    res = _export(run, "--target", "coreml", "--weights", "int8", "--eval-images", "12")
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    assert "student loaded from cache" in res.stderr
    manifest = verify(run["bundle"])
    assert {"image_fp32", "image_coreml", "image_coreml_w8"} <= set(manifest["encoders"])
    cm = manifest["encoders"]["image_coreml"]
    assert cm["file"] == "encoders/image.mlpackage" and cm["precision"] == "fp16"
    assert cm["inputs"]["image"]["type"] == "image" and cm["outputs"]["embedding"]["shape"] == [1, 16]
    assert manifest["encoders"]["image_coreml_w8"]["spec"]["compression_ops"] == ["constexpr_affine_dequantize"]
    report = json.loads((run["bundle"] / "report.json").read_text())
    assert {"image_int8", "image_coreml", "image_coreml_w8"} <= set(report["variants"])  # merged across targets


def test_tensorrt_writes_static_qdq_onnx_and_the_trtexec_command(run: dict[str, Path],
                                                                 onnx_bundle: dict[str, Any]) -> None:
    res = _export(run, "--target", "tensorrt", "--int8", "--calib-images", "8", "--eval-images", "12")
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    assert "TensorRT engine not built" in res.stderr and "trtexec --onnx=tensorrt/image_static.onnx" in res.stderr
    manifest = verify(run["bundle"])
    entry = manifest["encoders"]["image_tensorrt"]
    assert entry["file"] == "tensorrt/image_static.onnx" and entry["kind"] == "tensorrt-onnx"
    assert entry["inputs"]["image"]["shape"] == [1, 3, 32, 32] and entry["static_shape"] == [1, 3, 32, 32]
    assert entry["trtexec"] == ("trtexec --onnx=tensorrt/image_static.onnx --saveEngine=image-int8.engine "
                                "--fp16 --int8")
    assert entry["engine_built"] is False and entry["quantization"]["all_zero_points_zero"]
    assert qdq_properties(run["bundle"] / entry["file"])["all_zero_points_zero"]


def test_user_errors(run: dict[str, Path], onnx_bundle: dict[str, Any], tmp_path: Path) -> None:
    res = _export(run, "--target", "onnx", "--tag", "nope", bundle=tmp_path / "b")
    assert res.exit_code == 2 and "nope" in res.output  # --tag is a declared choice (best | last)
    res = _export(run, "--target", "onnx", "--image-size", "64")
    assert isinstance(res.exception, MalmError) and "use a new bundle directory" in str(res.exception)
    res = _invoke(["export", "--checkpoint", str(tmp_path / "none"), "--data", str(run["data"]), "--bundle",
                 str(tmp_path / "c"), "--target", "onnx"])
    assert isinstance(res.exception, MalmError) and "not a training run directory" in str(res.exception)


def test_student_none_exports_the_teachers_own_image_encoder(run: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke(["export", "--checkpoint", str(run["run"]), "--data", str(run["data"]), "--bundle",
                   str(tmp_path / "b"), "--target", "onnx", "--student", "none", "--no-recipe-encoder",
                   "--eval-images", "12", "--json"])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    manifest = verify(tmp_path / "b")
    assert set(manifest["encoders"]) == {"image_fp32"} and "student" not in manifest
    row = json.loads(res.stdout)["variants"]["image_fp32"]
    assert row["cosine_to_teacher"] > 0.9999  # it *is* the teacher
    assert row["retrieval"] == json.loads(res.stdout)["variants"]["teacher_torch_fp32"]["retrieval"]
