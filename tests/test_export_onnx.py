"""ONNX export of a small student: dynamic batch, metadata, parity check; int8 QDQ model properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from malm import cpu
from malm.errors import MalmError
from malm.export import onnx_export as ox
from malm.export.distill import StudentFeatures
from malm.export.int8_gate import MIN_COSINE
from malm.export.quantize import (
    VARIANTS,
    ImageCalibration,
    Int8Spec,
    calibration_batches,
    exact_session,
    qdq_properties,
    quantize_int8,
)
from malm.export.student import StudentConfig, StudentImageEncoder
from malm.preprocess import PreprocessConfig

SIZE = 32
PP = PreprocessConfig.for_size(SIZE)


def _photo_like(root: Path, n: int, seed: int) -> list[Path]:
    """Colour gradients + texture + noise at varied sizes and aspect ratios: photo-like statistics."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(36, 64)), int(rng.integers(36, 64))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, 3) + np.stack([xx, yy, xx + yy], -1) * rng.uniform(-200, 200, 3)
        texture = 30 * np.sin(xx[..., None] * rng.uniform(5, 40, 3) + yy[..., None] * rng.uniform(5, 40, 3))
        pix = np.clip(base + texture + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(root / f"img{seed}_{i}.jpg")
        Image.fromarray(pix).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx")
    # ImageNet weights: realistic activation ranges for the quantizer (random BN stats are not).
    student = StudentImageEncoder(StudentConfig(embed_dim=16, token_dim=8, image_size=SIZE)).eval()
    enc = StudentFeatures(student).eval()
    paths = _photo_like(root, 24, seed=0)  # calibration
    images = np.concatenate(list(calibration_batches(_photo_like(root, 12, seed=1), PP)))  # held out
    fp32 = ox.export_image_encoder(ox.ImageEncoderForExport(enc, tokens=True), root / "image_fp32.onnx", SIZE,
                                   metadata={"model_hash": "abc", "config": '{"x": 1}'})
    int8 = root / "image_int8.onnx"
    info = quantize_int8(fp32, int8, ImageCalibration(paths, PP))
    return {"enc": enc, "fp32": fp32, "int8": int8, "images": images, "info": info, "paths": paths}


def test_dynamic_batch_outputs_and_metadata(exported: dict[str, object]) -> None:
    fp32 = exported["fp32"]
    assert isinstance(fp32, Path)
    spec = ox.io_spec(fp32)
    assert spec["opset"] >= 17
    assert spec["inputs"]["image"] == {"dtype": "float32", "shape": ["batch", 3, SIZE, SIZE]}
    assert spec["outputs"]["embedding"]["shape"] == ["batch", 16]
    assert spec["outputs"]["tokens"]["shape"] == ["batch", 1, 8]
    meta = ox.read_metadata(fp32)
    assert meta["model_hash"] == "abc" and meta["config"] == '{"x": 1}'
    sess = ox.session(fp32)
    for n in (1, 3):
        emb, tok = sess.run(None, {"image": np.random.default_rng(n).standard_normal((n, 3, SIZE, SIZE), np.float32)})
        assert emb.shape == (n, 16) and tok.shape == (n, 1, 8)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_parity_check_passes_for_the_exported_module_and_fails_for_another(exported: dict[str, object]) -> None:
    enc, fp32, images = exported["enc"], exported["fp32"], exported["images"]
    assert isinstance(fp32, Path) and isinstance(images, np.ndarray)
    assert ox.parity_check(ox.ImageEncoderForExport(enc, tokens=False), fp32, images) >= 0.9999  # type: ignore[arg-type]
    torch.manual_seed(1)
    other = StudentFeatures(StudentImageEncoder(StudentConfig(embed_dim=16, token_dim=8, image_size=SIZE),
                                                pretrained=False).eval())
    with pytest.raises(MalmError, match="failed its parity check"):
        ox.parity_check(ox.ImageEncoderForExport(other, tokens=False), fp32, images)


def test_qdq_model_is_symmetric_int8_per_channel(exported: dict[str, object]) -> None:
    int8 = exported["int8"]
    assert isinstance(int8, Path)
    props = qdq_properties(int8)
    assert props["qdq_nodes"] > 100 and props["all_zero_points_zero"] and props["opset"] >= 17
    assert props["per_channel_scales"] > 0
    model = onnx.load(str(int8))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    conv_weights = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert not zp.any()
            # activations and weights int8; only biases (int32, zero point 0) are wider
            assert zp.dtype in (np.int8, np.int32)
            if node.op_type == "DequantizeLinear" and consumers.get(node.output[0]) == "Conv" and node.input[0] in inits \
                    and inits[node.input[0]].ndim == 4:
                conv_weights += 1
                assert inits[node.input[0]].dtype == np.int8
                assert inits[node.input[1]].ndim == 1 and inits[node.input[1]].size == inits[node.input[0]].shape[0]
    assert conv_weights >= 50  # every conv's weights, one scale per output channel
    info = exported["info"]
    assert isinstance(info, dict) and info["calibration_images"] == 24 and info["format"] == "QDQ"


def test_int8_stays_close_to_fp32_and_is_smaller(exported: dict[str, object]) -> None:
    """The TensorRT-format model: its exact QDQ math (what TensorRT computes, int32 accumulation) meets the
    export gate's bound; this CPU's ONNX Runtime kernels must too unless it is an x86 without VNNI, where
    they saturate (the SDK's self-check keeps it from being used there: tests/test_sdk_selfcheck.py)."""
    fp32, int8, images = exported["fp32"], exported["int8"], exported["images"]
    assert isinstance(fp32, Path) and isinstance(int8, Path) and isinstance(images, np.ndarray)
    a = ox.run_image(ox.session(fp32), images)
    exact = ox.run_image(exact_session(int8), images)
    assert ox.cosine_rows(a, exact).mean() >= MIN_COSINE
    assert not np.allclose(a, exact, atol=1e-4)  # really quantized, not the fp32 graph
    here = ox.cosine_rows(a, ox.run_image(ox.session(int8), images)).mean()
    assert here >= MIN_COSINE or cpu.int8_may_saturate(), f"{here:.4f} on {cpu.description()}"
    assert int8.stat().st_size < fp32.stat().st_size / 3


def test_cpu_variant_has_uint8_activations_and_symmetric_per_channel_int8_weights(
        tmp_path: Path, exported: dict[str, object]) -> None:
    fp32, paths, images = exported["fp32"], exported["paths"], exported["images"]
    assert isinstance(fp32, Path) and isinstance(paths, list) and isinstance(images, np.ndarray)
    cpu_model = tmp_path / "image_int8_cpu.onnx"
    info = quantize_int8(fp32, cpu_model, ImageCalibration(paths, PP), VARIANTS["image_int8_cpu"])
    assert info["activations"] == "uint8 asymmetric"
    props = qdq_properties(cpu_model)
    assert props["activation_zero_point_types"] == ["uint8"]
    # int8 weights (int32 biases), every zero point 0
    assert props["weight_zero_point_types"] == ["int32", "int8"] and props["weight_zero_points_zero"]
    assert props["per_channel_weights"] >= 50 and not props["all_zero_points_zero"]
    model = onnx.load(str(cpu_model))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    act_zp = [inits[n.input[2]] for n in model.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_zp and any(int(z) != 0 for z in act_zp)  # calibrated, not forced to 0
    # ReLU6 folded into the uint8 range: no Clip left between a conv and its QuantizeLinear.
    assert sum(n.op_type == "Clip" for n in model.graph.node) < sum(n.op_type == "Clip" for n in
                                                                     onnx.load(str(exported["int8"])).graph.node)
    # Its exact math meets the export gate's bound; this CPU's fused kernels too, unless it is an x86 without
    # VNNI (saturation: the SDK's self-check falls back from it there, tests/test_sdk_selfcheck.py).
    a = ox.run_image(ox.session(fp32), images)
    assert ox.cosine_rows(a, ox.run_image(exact_session(cpu_model), images)).mean() >= MIN_COSINE
    here = ox.cosine_rows(a, ox.run_image(ox.session(cpu_model), images)).mean()
    assert here >= MIN_COSINE or cpu.int8_may_saturate(), f"{here:.4f} on {cpu.description()}"
    # The TensorRT-ready model keeps its int8 symmetric activations.
    sym = qdq_properties(exported["int8"])  # type: ignore[arg-type]
    assert sym["activation_zero_point_types"] == ["int8"] and sym["all_zero_points_zero"]
    with pytest.raises(MalmError, match="unknown activation quantization"):
        quantize_int8(fp32, tmp_path / "x.onnx", ImageCalibration(paths, PP), Int8Spec(activations="int4"))


def _assert_seven_bit_dense_weights(model: onnx.ModelProto, inits: dict[str, np.ndarray]) -> None:
    """Dense convs (U8S8 GEMM on x86) hold 7-bit weights (|w| <= 64); depthwise ones keep the 8-bit range."""
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    dense, depthwise = [], []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in dq:
            continue
        w = inits[dq[node.input[1]].input[0]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        (dense if group == 1 else depthwise).append(int(np.abs(w.astype(np.int32)).max()))
    assert len(dense) >= 30 and len(depthwise) >= 10
    assert max(dense) <= 64 and max(depthwise) == 127


def test_seven_bit_dense_weights_run_without_saturation(tmp_path: Path, exported: dict[str, object]) -> None:
    """reduce_range="gemm" (the measured alternative, benchmarks/int8_cpu.py): this CPU's kernels compute the
    model's exact math, VNNI or not (saturation gives a mean ~0.85 here)."""
    fp32, paths, images = exported["fp32"], exported["paths"], exported["images"]
    assert isinstance(fp32, Path) and isinstance(paths, list) and isinstance(images, np.ndarray)
    q = tmp_path / "gemm7.onnx"
    info = quantize_int8(fp32, q, ImageCalibration(paths, PP), Int8Spec(activations="asymmetric", reduce_range="gemm"))
    assert "7-bit in dense layers" in info["weights"]
    model = onnx.load(str(q))
    _assert_seven_bit_dense_weights(model, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    agree = ox.cosine_rows(ox.run_image(ox.session(q), images), ox.run_image(exact_session(q), images))
    assert agree.mean() >= 0.999 and agree.min() >= 0.99  # fused-kernel rounding only
    with pytest.raises(MalmError, match="unknown weight quantization"):
        quantize_int8(fp32, tmp_path / "x.onnx", ImageCalibration(paths, PP), Int8Spec(reduce_range="some"))


def test_unreadable_calibration_image_is_named(tmp_path: Path, exported: dict[str, object]) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    fp32 = exported["fp32"]
    assert isinstance(fp32, Path)
    with pytest.raises(MalmError, match="bad.jpg"):
        quantize_int8(fp32, tmp_path / "q.onnx", ImageCalibration([bad], PP))


def test_calibration_reports_each_image(exported: dict[str, object], tmp_path: Path) -> None:
    """`on_image` is what the CLI's calibration progress bar advances with: once per calibration image."""
    paths = exported["paths"]
    assert isinstance(paths, list)
    seen: list[int] = []
    quantize_int8(exported["fp32"], tmp_path / "q.onnx", ImageCalibration(paths[:5], PP), on_item=seen.append)  # type: ignore[arg-type]
    assert seen == [1] * 5
