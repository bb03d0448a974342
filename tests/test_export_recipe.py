"""The recipe encoder ships like the image encoder: int8 through the gate, TensorRT-ready, CoreML; the SDK picks
the int8 variant by its self-check on this machine; bundles without these files keep loading."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _tiny_run import make_dataset, tiny_config
from typer.testing import CliRunner

from malm.bundle import read_manifest, verify
from malm.cli import app
from malm.edge_index.records import RecipeRecord
from malm.errors import BundleError
from malm.export.int8_gate import MIN_COSINE
from malm.export.quantize import exact_session, qdq_properties
from malm.sdk.bundle_loader import open_bundle
from malm.sdk.recipe_encoder import OnnxRecipeEncoder
from malm.sdk.selfcheck import SelfCheckError

pytestmark = pytest.mark.slow

RECIPES = [RecipeRecord(id=f"r{i}", title=f"{a} {b} bake", ingredients=(f"2 cups {a}", f"1½ tbsp {b}", "salt"),
                        instructions=(f"cook the {a} well .", "serve &amp; enjoy"))
           for i, (a, b) in enumerate([("tomato", "basil"), ("rice", "egg"), ("pasta", "cheese"), ("onion", "garlic"),
                                       ("flour", "sugar"), ("oil", "salt")])]


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, args, catch_exceptions=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe-export")
    data = make_dataset(root / "data", n_train=24, n_val=4, n_test=12, seed=1)
    out = root / "run"
    res = _invoke(["train", "--no-progress", "--data", str(data), "--preset",
                   str(tiny_config(root / "c.json", epochs=1, seed=0)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    bundle = root / "bundle"
    res = _invoke(["export", "--checkpoint", str(out), "--data", str(data), "--bundle", str(bundle), "--target", "onnx",
                   "--int8", "--calib-images", "12", "--student", "none", "--eval-images", "12",
                   "--accept-int8-drop"])  # for the tiny *image* tower (12 photos); the recipe gate is asserted below
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return {"data": data, "run": out, "bundle": bundle, "root": root, "log": res.stderr}  # type: ignore[dict-item]


def test_int8_recipe_encoder_passes_the_gate_and_is_tensorrt_ready(run: dict[str, Path]) -> None:
    manifest = verify(run["bundle"])
    entry = manifest["encoders"]["recipe_int8"]
    assert entry["file"] == "encoders/recipe_int8.onnx" and entry["role"] == "recipe" and entry["precision"] == "int8"
    gate = entry["gate"]
    assert gate["gated_on"] == "exact" and gate["cosine_mean_exact"] >= MIN_COSINE and not gate["accepted"]
    assert gate["recipes"] == 12 and "int8 gate: recipe_int8 mean cosine" in str(run["log"])
    q = entry["quantization"]
    assert q["all_zero_points_zero"] and q["calibration_recipes"] == 12 and q["format"] == "QDQ"
    assert (run["bundle"] / entry["file"]).stat().st_size < (run["bundle"] / "encoders/recipe_fp32.onnx").stat().st_size

    trt = manifest["encoders"]["recipe_tensorrt"]
    assert trt["kind"] == "tensorrt-onnx" and trt["file"] == "tensorrt/recipe_static.onnx"
    assert trt["inputs"]["title"]["shape"][0] == 1 and trt["outputs"]["embedding"]["shape"][0] == 1
    assert trt["trtexec"] == ("trtexec --onnx=tensorrt/recipe_static.onnx --saveEngine=recipe-int8.engine --fp16 "
                              "--int8")
    assert trt["engine_built"] is False and qdq_properties(run["bundle"] / trt["file"])["all_zero_points_zero"]

    tok = manifest["tokenizer"]
    fp32 = manifest["encoders"]["recipe_fp32"]["inputs"]
    assert (tok["max_title_tokens"], tok["max_ingredients"], tok["max_instructions"], tok["max_tokens"]) == (
        fp32["title"]["shape"][1], fp32["ingredients"]["shape"][1], fp32["instructions"]["shape"][1],
        fp32["ingredients"]["shape"][2])
    assert tok["vocab"] == "vocab.json" and tok["rules"] == "malm-text-1"
    sc = manifest["recipe_selfcheck"]
    assert sc["count"] == 12 and sc["expected"]["recipe_int8"] == gate["cosine_mean_exact"]
    assert np.load(run["bundle"] / sc["title"]).dtype == np.int32


def test_static_twin_computes_what_the_int8_model_computes(run: dict[str, Path]) -> None:
    manifest = read_manifest(run["bundle"])
    sc = manifest["recipe_selfcheck"]
    ids = {k: np.load(run["bundle"] / sc[k]).astype(np.int64)[:1] for k in ("title", "ingredients", "instructions")}
    # Exact QDQ math (what TensorRT computes): fused CPU kernels may fuse a static graph differently.
    dyn = exact_session(run["bundle"] / "encoders/recipe_int8.onnx").run(["embedding"], ids)[0]
    static = exact_session(run["bundle"] / "tensorrt/recipe_static.onnx").run(["embedding"], ids)[0]
    assert np.allclose(dyn, static, atol=1e-6)
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # batch 1 only: what a static engine takes
        exact_session(run["bundle"] / "tensorrt/recipe_static.onnx").run(
            ["embedding"], {k: np.repeat(v, 2, axis=0) for k, v in ids.items()})


def test_sdk_embeds_recipes_through_int8_within_the_gate(run: dict[str, Path]) -> None:
    bundle = open_bundle_no_index(run["bundle"])
    enc = OnnxRecipeEncoder(bundle)
    assert enc.variant == "int8" and enc.self_check.status == "passed"
    assert enc.self_check.cosine is not None and enc.self_check.cosine >= MIN_COSINE
    fp32 = OnnxRecipeEncoder(bundle, variant="fp32")
    assert fp32.variant == "fp32" and fp32.self_check.cosine is not None and fp32.self_check.cosine > 0.9999
    a, b = enc(RECIPES).embeddings, fp32(RECIPES).embeddings
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() >= MIN_COSINE and cos.min() >= 0.95, cos


def test_a_failing_int8_self_check_falls_back_to_fp32(run: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    bundle = open_bundle_no_index(run["bundle"])
    assert bundle.sections.recipe_selfcheck is not None
    strict = replace(bundle.sections.recipe_selfcheck, min_cosine=1.0)  # no int8 model meets it
    bundle = replace(bundle, sections=replace(bundle.sections, recipe_selfcheck=strict))
    with caplog.at_level(logging.WARNING, logger="malm.sdk"):
        enc = OnnxRecipeEncoder(bundle)
    assert enc.variant == "fp32" and enc.self_check.rejected[0]["encoder"] == "int8"
    assert "recipe encoder int8 not used on this CPU" in caplog.text
    with pytest.raises(SelfCheckError, match="int8 recipe encoder disagrees"):
        OnnxRecipeEncoder(bundle, strict_selfcheck=True)


def test_old_bundles_without_the_new_files_still_load(run: dict[str, Path], tmp_path: Path) -> None:
    """A bundle written before this release: no recipe_int8 / TensorRT twin / recipe self-check / tokenizer
    section, and no preprocess keys after max_pixels, no selfcheck inputs_dtype."""
    old = tmp_path / "old"
    shutil.copytree(run["bundle"], old)
    m = json.loads((old / "manifest.json").read_text())
    for name in ("recipe_int8", "recipe_tensorrt"):
        m["files"].pop(m["encoders"].pop(name)["file"])
    for rel in list(m["files"]):
        if rel.startswith("selfcheck/recipe_"):
            m["files"].pop(rel)
    for key in ("tokenizer", "recipe_selfcheck"):
        m.pop(key)
    for key in ("algorithm", "exif_orientation", "alpha_background", "max_aspect", "jpeg_draft", "layout", "dtype",
                "channels"):
        m["preprocess"].pop(key)
    m["selfcheck"].pop("inputs_dtype")
    (old / "manifest.json").write_text(json.dumps(m))
    verify(old)
    bundle = open_bundle_no_index(old)
    assert bundle.preprocess == open_bundle_no_index(run["bundle"]).preprocess
    enc = OnnxRecipeEncoder(bundle)
    assert enc.variant == "fp32" and enc.self_check.status == "no_data"
    assert enc.limits == OnnxRecipeEncoder(open_bundle_no_index(run["bundle"])).limits  # read off the model
    assert len(enc(RECIPES[:2]).embeddings) == 2


def test_a_tokenizer_section_that_disagrees_with_the_model_is_refused(run: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(run["bundle"], bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["tokenizer"]["max_tokens"] += 1
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="tokenizer limits .* do not match"):
        OnnxRecipeEncoder(open_bundle_no_index(bad))


def test_coreml_recipe_package_is_converted_and_checked(run: dict[str, Path]) -> None:
    try:
        import coremltools  # noqa: F401
    except ImportError as e:  # pragma: no cover - malm[export] installs it
        pytest.skip(f"coremltools cannot run here ({e}): the CoreML recipe package is not converted")
    res = _invoke(["export", "--checkpoint", str(run["run"]), "--data", str(run["data"]), "--bundle",
                   str(run["bundle"]), "--target", "coreml", "--student", "none", "--eval-images", "12"])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    manifest = verify(run["bundle"])
    entry = manifest["encoders"]["recipe_coreml"]
    assert entry["file"] == "encoders/recipe.mlpackage" and entry["kind"] == "coreml" and entry["role"] == "recipe"
    tok = manifest["tokenizer"]
    assert entry["inputs"]["title"] == {"type": "multiarray", "dtype": "int32", "shape": [1, tok["max_title_tokens"]]}
    assert entry["inputs"]["ingredients"]["shape"] == [1, tok["max_ingredients"], tok["max_tokens"]]
    assert entry["outputs"]["embedding"]["shape"] == [1, manifest["embedding"]["dim"]]
    assert entry["spec"]["model_type"] == "mlProgram" and entry["spec"]["fp16_compute"]
    report = json.loads((run["bundle"] / "report.json").read_text())
    assert "CoreML prediction needs macOS" in report["variants"]["recipe_coreml"]["note"] or \
        report["variants"]["recipe_coreml"]["note"] == "available (macOS)"
    assert "recipe_int8" in manifest["encoders"]  # the onnx target's files stay


def open_bundle_no_index(root: Path) -> Any:
    """`open_bundle` wants an index; these bundles have none yet: give them a one-recipe index."""
    if not read_manifest(root).get("index"):
        from malm.edge_index.builder import build_index

        dim = read_manifest(root)["embedding"]["dim"]
        build_index(root, RECIPES[:1], lambda recs: np.ones((len(recs), dim), np.float32))
    return open_bundle(root)
