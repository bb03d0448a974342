"""A deployment-size bundle for speed measurements: the shapes that ship, not the tiny demo model.

The tiny model the benchmark can train in minutes has a 64-px ViT teacher that is *smaller* than the
EfficientNet-Lite0 student, so speed ratios measured on it say nothing about a real deployment. Speed does
not depend on the weights' values, so this builds the real shapes:

- teacher: the full `malm` preset (ViT-B/16 at 224 px, 1024-d), untrained weights, torch eager;
- student: EfficientNet-Lite0 at 224 px with its ImageNet weights and an untrained projection to 1024-d,
  exported and int8-quantized by malm's own exporter functions (`malm.export.onnx_export.export_image_encoder`,
  `malm.export.quantize.quantize_int8`: QDQ, symmetric, per-channel), calibrated on benchmark photos;
- index: `malm.edge_index.builder.build_index` over synthetic recipes with clustered 1024-d vectors.

Its quality is meaningless (untrained) and it is labelled so everywhere; its speed is what a device sees.
Built once under WORK/deploy-*, reused by later runs.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.suite.context import Context


@dataclass(frozen=True)
class DeploymentBundle:
    root: Path
    image_size: int
    dim: int
    recipes: int
    teacher_preset: str
    info: dict[str, Any]


def synthetic_photos(folder: Path, n: int, size: int = 512, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields + texture), for calibration when no dataset photos exist."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        path = folder / f"photo_{i:04d}.jpg"
        if not path.is_file():
            c = rng.uniform(0, 255, (3, 3)).astype(np.float32)
            img = np.stack([c[k, 0] * xx + c[k, 1] * yy + c[k, 2] * (1 - xx) for k in range(3)], -1) / 2
            img += rng.normal(0, 18, img.shape).astype(np.float32)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _records(n: int) -> list[Any]:
    from malm.edge_index.records import RecipeRecord

    words = ("tomato", "basil", "garlic", "onion", "rice", "chicken", "lemon", "butter", "flour", "egg", "cheese",
             "pepper", "salt", "oil", "beans", "carrot", "potato", "ginger", "soy", "honey")
    out = []
    for i in range(n):
        ing = tuple(f"{1 + i % 3} cups {words[(i * 7 + j) % len(words)]}" for j in range(6 + i % 5))
        out.append(RecipeRecord(id=f"bench{i:07d}", title=f"{words[i % 20]} {words[(i // 20) % 20]} dish {i}",
                                ingredients=ing, instructions=("Mix everything.", "Cook for 20 minutes.", "Serve.")))
    return out


def build_index_bundle(ctx: Context, root: Path, recipes: int, dim: int, seed: int) -> float:
    """Add `recipes` synthetic recipes with clustered vectors to the bundle at `root`; returns seconds."""
    from benchmarks.suite.index_scale import clustered_vectors
    from malm.edge_index.builder import build_index
    from malm.edge_index.hnsw import IndexSettings

    vectors = clustered_vectors(recipes, dim, seed=seed)
    records = _records(recipes)
    row = {r.id: i for i, r in enumerate(records)}

    def encode(batch: Any) -> np.ndarray:
        return vectors[[row[r.id] for r in batch]]

    d = IndexSettings(dim=dim)
    t0 = time.perf_counter()
    build_index(root, records, encode, M=d.M, ef_construction=d.ef_construction, ef_search=d.ef_search,
                batch_size=8192)
    return time.perf_counter() - t0


def obtain(ctx: Context, recipes: int) -> DeploymentBundle:
    """The deployment-size bundle with `recipes` synthetic recipes, built on first use."""
    import torch

    from malm.bundle import BundleWriter
    from malm.export import onnx_export as ox
    from malm.export.distill import StudentFeatures
    from malm.export.quantize import VARIANTS, ImageCalibration, quantize_int8
    from malm.export.student import StudentConfig, StudentImageEncoder
    from malm.manifest import EmbeddingSection, EncoderEntry, PreprocessSection
    from malm.training.config import load_preset

    cfg = load_preset("malm")
    size, dim = cfg.model.image.image_size, cfg.model.embed_dim
    root = ctx.options.work / f"deploy-{size}px-{dim}d-{recipes}"
    marker = root.with_name(root.name + ".json")  # beside the bundle: nothing unlisted inside it
    if marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        return DeploymentBundle(root, size, dim, recipes, "malm", info)
    if root.exists():
        shutil.rmtree(root)  # a half-built one from an interrupted run
    ctx.log(f"deployment bundle: exporting EfficientNet-Lite0 at {size}px, {dim}-d (fp32 + int8)")
    pp = cfg.preprocess()
    info: dict[str, Any] = {"teacher": "malm preset ViT (untrained weights)", "image_size": size, "dim": dim,
                            "recipes": recipes}
    tmp = ctx.options.work / "deploy-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(0)
    student = StudentImageEncoder(StudentConfig(embed_dim=dim, image_size=size, mean=pp.mean, std=pp.std)).eval()
    module = ox.ImageEncoderForExport(StudentFeatures(student), tokens=False)
    t0 = time.perf_counter()
    fp32, int8 = tmp / "image_fp32.onnx", tmp / "image_int8.onnx"
    ox.export_image_encoder(module, fp32, size, metadata={"role": "image", "precision": "fp32", "note": "benchmark"})
    calib = synthetic_photos(ctx.options.work / "photos", 64, seed=ctx.options.seed)
    try:
        real = ctx.artifacts().images(64, last=False)
        calib = real if len(real) >= 16 else calib
    except Exception as e:  # the tiny model build is not required for deployment-size speed
        ctx.log(f"deployment bundle: calibrating on synthetic photos ({e})")
    qinfo = quantize_int8(fp32, int8, ImageCalibration(calib, pp), VARIANTS["image_int8"])
    info["export_s"] = round(time.perf_counter() - t0, 1)
    # The CPU variant the exporter ships beside the TensorRT-compatible one (uint8 activations), when this
    # malm's quantizer has it; and a what-if (not shipped): the same in QOperator format (see WHATIF_NOTE).
    int8_cpu = tmp / "image_int8_cpu.onnx"
    try:
        cinfo: dict[str, Any] | None = quantize_int8(fp32, int8_cpu, ImageCalibration(calib, pp),
                                                     VARIANTS["image_int8_cpu"])
    except TypeError:  # an older quantizer without the CPU variant
        cinfo = None
    whatif: dict[str, str] = {}
    path = root.with_name(f"{root.name}-int8-u8s8-qoperator.onnx")
    quantize_u8s8(fp32, path, calib, pp, "qoperator")
    whatif["student_int8_u8s8_qoperator"] = str(path)
    info["whatif"] = whatif
    info["quantization"] = qinfo
    info["calibration_images"] = len(calib)
    with BundleWriter(root) as bw:
        bw.add_file(fp32, "encoders/image_fp32.onnx", move=True)
        bw.add_file(int8, "encoders/image_int8.onnx", move=True)
        if cinfo is not None:
            bw.add_file(int8_cpu, "encoders/image_int8_cpu.onnx", move=True)
        bw.set_model({"name": "benchmark-deployment-size", "note": "untrained weights: for speed and size only"})
        bw.set_preprocess(PreprocessSection.from_dict(pp.to_dict()))
        bw.set_embedding(EmbeddingSection(dim))
        bw.set_encoder("image_fp32", EncoderEntry("encoders/image_fp32.onnx", "onnx", "image", "fp32"))
        bw.set_encoder("image_int8", EncoderEntry("encoders/image_int8.onnx", "onnx", "image", "int8", qinfo))
        if cinfo is not None:
            bw.set_encoder("image_int8_cpu", EncoderEntry("encoders/image_int8_cpu.onnx", "onnx", "image", "int8", cinfo,
                                                          {"prefer": "cpu"}))
    shutil.rmtree(tmp, ignore_errors=True)
    ctx.log(f"deployment bundle: indexing {recipes:,} synthetic recipes ({dim}-d clustered vectors)")
    info["index_build_s"] = round(build_index_bundle(ctx, root, recipes, dim, ctx.options.seed + 7), 1)
    marker.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return DeploymentBundle(root, size, dim, recipes, "malm", info)


WHATIF_NOTE = ("what-if, not in the bundle: the same fp32 student quantized by onnxruntime's quantize_static with uint8 "
               "asymmetric activations and int8 symmetric per-channel weights in QOperator format (QLinearConv), "
               "same calibration")


def quantize_u8s8(fp32: Path, out: Path, calib: list[Path], pp: Any, fmt: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from malm.export.quantize import _Reader

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(str(pre), str(out), _Reader(calib, pp, "image"),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True})
    finally:
        pre.unlink(missing_ok=True)


def teacher_model(preset: str = "malm") -> Any:
    """The full-size teacher (untrained), eval mode: what a user without malm would run in torch."""
    import torch

    from malm.training.config import load_preset
    from malm.training.models.retrieval import RetrievalModel

    torch.manual_seed(0)
    cfg = load_preset(preset)
    return RetrievalModel(cfg.model, vocab_size=1000).eval(), cfg.preprocess()
