"""`--target coreml`: an fp16 mlprogram with the normalization folded in, plus a compressed twin (--weights).

    encoders/image.mlpackage        fp16
    encoders/image_w8.mlpackage     --weights int8 (linear, symmetric)
    encoders/image_p6.mlpackage     --weights palettize6 (6-bit k-means)
    encoders/recipe.mlpackage       the recipe encoder (fp16, int32 token ids), unless --no-recipe-encoder

Prediction needs macOS; on Linux the models are converted, saved and their spec inspected.
"""

from __future__ import annotations

from pathlib import Path

from malm.export import recipe
from malm.export.context import Artifacts, ExportContext
from malm.export.report import size_mb

# --weights mode → (manifest name, bundle path, precision); "none" is the fp16 model every export writes.
VARIANTS = {
    "none": ("image_coreml", "encoders/image.mlpackage", "fp16"),
    "int8": ("image_coreml_w8", "encoders/image_w8.mlpackage", "fp16-w8"),
    "palettize6": ("image_coreml_p6", "encoders/image_p6.mlpackage", "fp16-p6"),
}


def build(ctx: ExportContext) -> Artifacts:
    # on use only: loads torch
    from malm.export import coreml

    meta = {k: ctx.meta[k] for k in ("malm_version", "model_hash", "embedding_dim", "preprocess", "config_hash")}
    modes = ["none"] + ([ctx.options.weight_mode] if ctx.options.weight_mode != "none" else [])
    outputs = [(ctx.tmp / Path(VARIANTS[m][1]).name, m) for m in modes]
    infos = coreml.convert_variants(ctx.student.encoder, outputs, ctx.student.preprocess, metadata=meta)
    out = Artifacts()
    for (path, weights), info in zip(outputs, infos, strict=True):
        name, rel, precision = VARIANTS[weights]
        ctx.log(f"{rel}: converted ({precision}); {info['prediction']}")
        entry = {"file": rel, "kind": "coreml", "role": "image", "precision": precision,
                 "model_hash": ctx.model_hash, "inputs": info["inputs"], "outputs": info["outputs"],
                 "weights": weights,
                 "spec": {k: info[k] for k in ("spec_version", "model_type", "fp16_compute", "compression_ops")}}
        out.add(path, rel, name, entry, {"size_mb": round(size_mb(path), 3), "note": info["prediction"]})
    out.notes.append(coreml.prediction_note())
    if ctx.options.with_recipe_encoder:  # the recipe encoder ships like the image encoder (malm/export/recipe.py)
        return Artifacts.join(out, recipe.coreml_variant(ctx))
    return out
