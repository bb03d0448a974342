"""The recipe encoder ships like the image encoder: int8 QDQ through the same gate, a TensorRT-ready static ONNX,
and a CoreML package (docs/bundle-format.md, "Encoders").

    encoders/recipe_int8.onnx       --int8: linear layers int8 (symmetric, zero points 0), the rest float
    tensorrt/recipe_static.onnx     --int8: the same at batch 1, what TensorRT builds its engine from
    encoders/recipe.mlpackage       --target coreml: fp16 mlprogram, int32 token ids in
    selfcheck/recipe_*.npy          held-out recipes' ids and recipe_fp32's embeddings of them (the SDK's self-check)

The gate: mean cosine to recipe_fp32 >= 0.98 on held-out (test-split) recipes, in the model's exact QDQ math
(what TensorRT, x86 with VNNI and ARM compute), as for the image encoder (malm/export/int8_gate.py). This CPU's
fused kernels are measured and reported beside it; the SDK's self-check measures the CPU it runs on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from malm import cpu
from malm._atomic import atomic_path
from malm.bundle import sha256_path
from malm.errors import MalmError
from malm.export import tensorrt as trt_mod
from malm.export.context import Artifacts, ExportContext
from malm.export.int8_gate import MIN_COSINE
from malm.export.quantize import VARIANTS, RecipeCalibration, exact_session, qdq_properties, quantize_int8
from malm.export.report import size_mb
from malm.manifest import RECIPE_INPUTS, RecipeSelfCheckSection

RECIPE_INT8 = "encoders/recipe_int8.onnx"
RECIPE_STATIC = "tensorrt/recipe_static.onnx"
RECIPE_COREML = "encoders/recipe.mlpackage"
SELFCHECK_RECIPES = 16  # held-out recipes whose ids travel with the bundle (~10 KB)
MAX_CALIBRATION = 256  # MinMax over this many training recipes already covers the activation ranges
SELFCHECK_FILES = {k: f"selfcheck/recipe_{k}.npy" for k in (*RECIPE_INPUTS, "fp32_embeddings")}


def recipe_arrays(prepared: Any, split: str, limit: int) -> dict[str, np.ndarray]:
    """The first `limit` recipes of `split` as the recipe encoder reads them (int64 token ids)."""
    if split not in prepared.splits:
        return {k: np.zeros((0, 1), np.int64) for k in RECIPE_INPUTS}
    data = prepared.split(split)
    n = min(limit, len(data))
    return {k: np.asarray(getattr(data, k)[:n]).astype(np.int64) for k in RECIPE_INPUTS}


def held_out(prepared: Any, limit: int) -> dict[str, np.ndarray]:
    """Test recipes (val where the data has no test split): the gate's and the self-check's recipes."""
    for split in ("test", "val"):
        arrays = recipe_arrays(prepared, split, limit)
        if len(arrays["title"]):
            return arrays
    raise MalmError("the recipe encoder's int8 gate needs held-out (test or val) recipes; the data has none")


def embed(path: Path, arrays: dict[str, np.ndarray], exact: bool = False, batch: int = 64) -> np.ndarray:
    """`embedding` of the ONNX recipe encoder at `path` (exact QDQ math with `exact`), in batches."""
    from malm.export import onnx_export as ox  # torch (its module imports it)

    sess = exact_session(path, threads=2) if exact else ox.session(path, threads=2)
    n = len(arrays["title"])
    out = [sess.run(["embedding"], {k: v[i:i + batch] for k, v in arrays.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(out).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def gate(fp32: Path, int8: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """recipe_int8 against recipe_fp32 on held-out recipes: exact QDQ math (gated) and this CPU's kernels."""
    ref = embed(fp32, arrays)
    here, exact = embed(int8, arrays), embed(int8, arrays, exact=True)
    c_here, c_exact = _cosine(ref, here), _cosine(ref, exact)
    return {"gated_on": "exact", "recipes": len(ref), "min_cosine": MIN_COSINE, "cpu": cpu.description(),
            "cosine_mean_exact": round(float(c_exact.mean()), 5), "cosine_min_exact": round(float(c_exact.min()), 5),
            "cosine_mean_this_cpu": round(float(c_here.mean()), 5),
            "cosine_min_this_cpu": round(float(c_here.min()), 5), "cosine_mean": round(float(c_exact.mean()), 5),
            "R@1_drop": None}  # not measured for recipes: the cosine is the gate


def int8_variants(ctx: ExportContext, fp32: Path) -> Artifacts:
    """recipe_int8.onnx (gated), its TensorRT-ready static twin, and the recipe self-check files."""
    from malm.export import onnx_export as ox  # torch (its module imports it)

    out = Artifacts()
    t0 = time.perf_counter()
    prepared = ctx.data.prepared
    calib = RecipeCalibration(recipe_arrays(prepared, "train", min(ctx.options.calibration_images, MAX_CALIBRATION)))
    test = held_out(prepared, max(ctx.options.num_eval_images, SELFCHECK_RECIPES))
    path = ctx.tmp / "recipe_int8.onnx"
    ctx.log(f"recipe int8: calibrating on {calib.count} training recipes (QDQ, symmetric, linear layers)")
    with ctx.progress("calibrating recipe_int8.onnx", calib.count) as advance:
        info = quantize_int8(fp32, path, calib, VARIANTS["recipe_int8"], on_item=advance)
    ox.set_metadata(path, ctx.meta_for(role="recipe", precision="int8"))
    row = gate(fp32, path, test)
    failed = row["cosine_mean"] < MIN_COSINE
    ctx.log(f"int8 gate: recipe_int8 mean cosine {row['cosine_mean']:.4f} (exact) on {row['recipes']} held-out "
            f"recipes, this CPU {row['cosine_mean_this_cpu']:.4f} -> {'FAIL' if failed else 'ok'}")
    if failed and not ctx.options.accept_int8_drop:
        raise MalmError(f"int8 export refused, measured on {cpu.description()}: recipe_int8 in its exact QDQ math: "
                        f"mean cosine to fp32 {row['cosine_mean']:.4f} < {MIN_COSINE} on {row['recipes']} held-out "
                        "recipes. Export without --int8, or pass --accept-int8-drop to ship it anyway")
    row["accepted"] = bool(failed)
    entry = ctx.onnx_entry(path, RECIPE_INT8, "onnx", "int8", model_hash=ctx.teacher.sha256, role="recipe",
                           quantization={**info, **qdq_properties(path)}, gate=row)
    out.add(path, RECIPE_INT8, "recipe_int8", entry, {"size_mb": round(path.stat().st_size / 1e6, 3), "gate": row})

    static = ctx.tmp / "recipe_static.onnx"
    static_onnx(path, static)
    file_hash = _sha256(static)
    command = trt_mod.trtexec_command(RECIPE_STATIC, "int8", engine="recipe-int8.engine")
    entry = ctx.onnx_entry(static, RECIPE_STATIC, "tensorrt-onnx", "int8", model_hash=ctx.teacher.sha256,
                           role="recipe", static_shape={k: [1, *v.shape[1:]] for k, v in test.items()},
                           trtexec=command, onnx_sha256=file_hash, engine_built=False,
                           engine_message="built on the device (TensorRT cannot run here): run the trtexec command",
                           engine_cache={"dir": "$MALM_TRT_CACHE or ~/.cache/malm/tensorrt",
                                         "key": "sm<major><minor>-trt<version>-<onnx sha256[:16]>"})
    out.add(static, RECIPE_STATIC, "recipe_tensorrt", entry, {"size_mb": round(static.stat().st_size / 1e6, 3),
                                                               "note": "TensorRT-ready; engine not built here"})
    out.recipe_selfcheck = _selfcheck(ctx, fp32, test, {"recipe_int8": row["cosine_mean_exact"]}, out)
    out.notes.append(f"recipe encoder int8: {time.perf_counter() - t0:.1f}s (calibration, gate, static twin)")
    return out


def _sha256(path: Path) -> str:
    return sha256_path(path)[0]


def static_onnx(src: Path, dest: Path) -> Path:
    """`src` with batch 1 on every input and output (TensorRT builds a static engine from it; the text dims are
    static already). The graph computes its reshapes from the input shapes, so only the declared dims change."""
    import onnx

    model = onnx.load(str(src))
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    del model.graph.value_info[:]  # inferred again below, with the fixed batch
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    with atomic_path(dest) as tmp:
        onnx.save(model, str(tmp))
    return dest


def _selfcheck(ctx: ExportContext, fp32: Path, test: dict[str, np.ndarray], expected: dict[str, float],
               out: Artifacts) -> RecipeSelfCheckSection:
    """The first held-out recipes' ids (int32: they fit, at half the bytes) and recipe_fp32's embeddings of them."""
    n = min(SELFCHECK_RECIPES, len(test["title"]))
    arrays = {k: np.ascontiguousarray(v[:n]).astype(np.int32) for k, v in test.items()}
    emb = embed(fp32, {k: v.astype(np.int64) for k, v in arrays.items()})
    for key, arr in (*arrays.items(), ("fp32_embeddings", emb)):
        path = ctx.tmp / f"recipe_selfcheck_{key}.npy"
        np.save(path, arr, allow_pickle=False)
        out.files.append((path, SELFCHECK_FILES[key]))
    f = SELFCHECK_FILES
    return RecipeSelfCheckSection(f["title"], f["ingredients"], f["instructions"], f["fp32_embeddings"], count=n,
                                  min_cosine=MIN_COSINE, expected=expected, exported_on=cpu.description())


def coreml_variant(ctx: ExportContext) -> Artifacts:
    """`encoders/recipe.mlpackage`: the recipe encoder as an fp16 mlprogram taking int32 ids (spec checked here;
    prediction needs macOS)."""
    from malm.export import coreml  # torch and coremltools

    out = Artifacts()
    if not _learned_features(ctx):
        out.notes.append("recipe encoder not converted to CoreML: this model reads MiniLM sentence vectors, "
                         "not vocab ids")
        return out
    t0 = time.perf_counter()
    path = ctx.tmp / "recipe.mlpackage"
    example = held_out(ctx.data.prepared, 1)
    meta = {k: ctx.meta[k] for k in ("malm_version", "config_hash")}
    info = coreml.convert_recipe(ctx.teacher.model, path, example, metadata={**meta, "role": "recipe"})
    ctx.log(f"{RECIPE_COREML}: converted (fp16); {info['prediction']}")
    entry = {"file": RECIPE_COREML, "kind": "coreml", "role": "recipe", "precision": "fp16",
             "model_hash": ctx.teacher.sha256, "inputs": info["inputs"], "outputs": info["outputs"],
             "exported_parity": info["exported_parity"],
             "spec": {k: info[k] for k in ("spec_version", "model_type", "fp16_compute")}}
    out.add(path, RECIPE_COREML, "recipe_coreml", entry, {"size_mb": round(size_mb(path), 3),
                                                          "note": info["prediction"]})
    out.notes.append(f"recipe encoder CoreML: {time.perf_counter() - t0:.1f}s (torch.export, conversion, spec check)")
    return out


def _learned_features(ctx: ExportContext) -> bool:
    cfg = getattr(getattr(ctx.teacher.model, "recipe_encoder", None), "cfg", None)
    return cfg is not None and getattr(cfg, "sentence_features", "learned") == "learned"
