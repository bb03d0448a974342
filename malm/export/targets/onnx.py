"""`--target onnx`: the image encoder (fp32, dynamic batch), int8 QDQ variants, matching head, recipe encoder.

    encoders/image_fp32.onnx        parity-checked against torch on real images
    encoders/image_int8.onnx        --int8: symmetric QDQ (TensorRT-ready)
    encoders/image_int8_cpu.onnx    --int8: uint8 activations (what x86 ONNX Runtime runs fast)
    rerank/matching_head.onnx       --tokens, when the run trained a matching head
    encoders/recipe_fp32.onnx       unless --no-recipe-encoder
    encoders/recipe_int8.onnx       --int8 (and tensorrt/recipe_static.onnx, selfcheck/recipe_*.npy): recipe.py
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np

from malm.errors import MalmError
from malm.export import matching_head as mh
from malm.export import recipe
from malm.export.context import Artifacts, ExportContext
from malm.export.quantize import VARIANTS, ImageCalibration, qdq_properties, quantize_int8

FP32 = "encoders/image_fp32.onnx"
INT8 = "encoders/image_int8.onnx"
INT8_CPU = "encoders/image_int8_cpu.onnx"
RECIPE = "encoders/recipe_fp32.onnx"


def build(ctx: ExportContext) -> Artifacts:
    fp32, emb32 = _image_fp32(ctx)
    int8 = _image_int8(ctx, emb32, fp32.variants["image_fp32"].get("retrieval", {})) if ctx.options.int8 else None
    head = _matching_head(ctx) if ctx.options.tokens else None
    return Artifacts.join(*(part for part in (fp32, int8, head, _recipe_encoder(ctx)) if part is not None))


def _image_fp32(ctx: ExportContext) -> tuple[Artifacts, np.ndarray]:
    # on use only: loads torch
    from malm.export import onnx_export as ox

    tokens = ctx.options.tokens
    path = ctx.tmp / "image_fp32.onnx"
    encoder = ctx.student.encoder
    ox.export_image_encoder(ox.ImageEncoderForExport(encoder, tokens=tokens), path, ctx.student.size,
                            metadata=ctx.meta_for(role="image", precision="fp32"))
    parity = ctx.data.parity_images
    worst = ox.parity_check(ox.ImageEncoderForExport(encoder, tokens=False), path, parity)
    ctx.log(f"image_fp32.onnx: parity with torch OK (min cosine {worst:.6f} on {len(parity)} real images)")
    emb32 = ox.run_image(ox.session(path, threads=2), ctx.data.eval_images)
    out = Artifacts()
    out.add(path, FP32, "image_fp32", ctx.onnx_entry(path, FP32, "onnx", "fp32", tokens=tokens,
                                                     parity_min_cosine=worst),
            {"parity_min_cosine": worst, **ctx.quality(emb32, path)})
    return out, emb32


# (file in tmp, bundle path, name, log line, extra metadata and manifest fields); the quantization options
# of each are quantize.VARIANTS[name].
_INT8_VARIANTS = (
    ("image_int8.onnx", INT8, "image_int8",
     "int8: calibrating on {n} training images (QDQ, symmetric, per-channel)", {}),
    # The CPU variant: same calibration, uint8 asymmetric activations (what x86 ONNX Runtime runs fast; see
    # quantize.quantize_int8). image_int8 stays symmetric for TensorRT.
    ("image_int8_cpu.onnx", INT8_CPU, "image_int8_cpu",
     "int8 (CPU): uint8 asymmetric activations, int8 symmetric per-channel weights, same calibration",
     {"variant": "cpu"}),
)


def _image_int8(ctx: ExportContext, emb32: np.ndarray, r32: dict[str, Any]) -> Artifacts:
    """The int8 variants of image_fp32.onnx; `emb32` / `r32` are fp32's embeddings and retrieval row."""
    # on use only: loads torch
    from malm.export import onnx_export as ox

    out = Artifacts()
    want = ctx.options.calibration_images
    calib = ctx.data.calibration_paths(want)
    if len(calib) < want:
        out.notes.append(f"int8 calibration asked for {want} images; the training split has {len(calib)}")
    fp32 = ctx.tmp / "image_fp32.onnx"
    scope = int8_scope(ctx)
    if scope == "linear":
        ctx.log("int8: the hybrid tower ships itself: its transformer's linear layers in int8, the convolutional "
                "stem in float (in int8 it costs too much accuracy, see quantize.non_linear_nodes)")
    for filename, rel, name, message, extra in _INT8_VARIANTS:
        path = ctx.tmp / filename
        ctx.log(message.format(n=len(calib)))
        with ctx.progress(f"calibrating {filename}", len(calib)) as advance:
            info = quantize_int8(fp32, path, ImageCalibration(calib, ctx.student.preprocess),
                                 replace(VARIANTS[name], scope=scope), on_item=advance)
        ox.set_metadata(path, ctx.meta_for(role="image", precision="int8", **extra))
        emb8 = ox.run_image(ox.session(path, threads=2), ctx.data.eval_images)
        row = ctx.quality(emb8, path)
        row["cosine_to_fp32"] = float(ox.cosine_rows(emb8, emb32).mean()) if ctx.data.eval_n else None
        r8 = row.get("retrieval", {})
        if "R@1" in r32 and "R@1" in r8:
            row["R@1_drop_vs_fp32"] = r32["R@1"] - r8["R@1"]
        prefer = {"prefer": "cpu"} if extra else {}
        out.add(path, rel, name, ctx.onnx_entry(path, rel, "onnx", "int8", tokens=ctx.options.tokens,
                                                quantization={**info, **qdq_properties(path)}, **prefer), row)
    return out


def int8_scope(ctx: ExportContext) -> str:
    """"linear" when the exported encoder is a hybrid teacher's own tower (`--student none`), else "all"."""
    # on use only: loads torch
    from malm.training.models.hybrid import HybridViT

    own_tower = ctx.student.manifest is None
    return "linear" if own_tower and isinstance(getattr(ctx.teacher.model, "image_encoder", None), HybridViT) else "all"


def _matching_head(ctx: ExportContext) -> Artifacts:
    """With --tokens, ship the run's trained matching head for re-ranking (when the preset trained one)."""
    out = Artifacts()
    run, tag = ctx.teacher.run, ctx.teacher.tag
    head = mh.load_trained_head(run, ctx.teacher.config, tag)  # refuses a head of another step than --tag
    if head is None:
        out.notes.append("no trained matching head in this run (preset without the matching loss, or no "
                         f"{mh.STATE_FILE}): re-ranking can use late interaction only")
        return out
    path = ctx.tmp / "matching_head.onnx"
    entry = mh.export_head(head, path, {k: ctx.meta[k] for k in ("malm_version", "model_hash", "teacher_sha256",
                                                                 "config_hash")})
    tag_meta = run / f"{tag}.json"
    tag_step = json.loads(tag_meta.read_text()).get("step") if tag_meta.is_file() else None
    entry["tag_step"] = tag_step
    entry["tag"] = tag
    ctx.log(f"{mh.BUNDLE_PATH}: trained matching head exported (step {head.step}, parity max |diff| "
            f"{entry['parity_max_abs']:.1e})")
    out.add(path, mh.BUNDLE_PATH, "matching_head", entry, {"size_mb": round(path.stat().st_size / 1e6, 3)})
    return out


def _recipe_encoder(ctx: ExportContext) -> Artifacts:
    # on use only: loads torch
    from malm.export import onnx_export as ox
    from malm.training.embed import stack_recipes

    out = Artifacts()
    opts, teacher = ctx.options, ctx.teacher.model
    recipe_cfg = getattr(getattr(teacher, "recipe_encoder", None), "cfg", None)
    if not opts.with_recipe_encoder:
        return out
    if opts.recipe_encoder is None and getattr(recipe_cfg, "sentence_features", "learned") != "learned":
        # Not asked for explicitly, and MiniLM sentence vectors are not token ids: skip rather than fail.
        out.notes.append("recipe encoder not exported: this model reads MiniLM sentence vectors, not vocab ids")
        return out
    path = ctx.tmp / "recipe_fp32.onnx"
    example = stack_recipes(ctx.data.items[:4])
    try:
        ox.export_recipe_encoder(teacher, path, example, metadata=ctx.meta_for(role="recipe", precision="fp32"))
    except MalmError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter's own errors are many; say which part failed
        raise MalmError(f"exporting the recipe encoder to ONNX failed ({type(e).__name__}: {e}); "
                        "use --no-recipe-encoder to export the image encoder alone") from None
    worst = ox.recipe_parity_check(teacher, path, {k: v.numpy() for k, v in example.items()})
    ctx.log(f"recipe_fp32.onnx: parity with torch OK (min cosine {worst:.6f})")
    entry = ctx.onnx_entry(path, RECIPE, "onnx", "fp32", model_hash=ctx.teacher.sha256, role="recipe",
                           parity_min_cosine=worst)
    out.add(path, RECIPE, "recipe_fp32", entry, {"size_mb": round(path.stat().st_size / 1e6, 3),
                                                 "parity_min_cosine": worst})
    if opts.int8:  # the recipe encoder ships like the image encoder (malm/export/recipe.py)
        return Artifacts.join(out, recipe.int8_variants(ctx, path))
    return out
