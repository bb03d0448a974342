"""`--target tensorrt`: a static 1×3×S×S ONNX (fp16, or int8 QDQ with --int8) and, where possible, the engine.

    tensorrt/image_static.onnx      what trtexec / the SDK builds the engine from (the manifest has the command)
"""

from __future__ import annotations

from typing import Any

from malm.bundle import sha256_path
from malm.export import tensorrt as trt_mod
from malm.export.context import Artifacts, ExportContext
from malm.export.quantize import VARIANTS, ImageCalibration, qdq_properties, quantize_int8


def build(ctx: ExportContext) -> Artifacts:
    # on use only: loads torch
    from malm.export import onnx_export as ox

    opts, size = ctx.options, ctx.student.size
    precision = "int8" if opts.int8 else "fp16"
    static = ctx.tmp / "image_static_fp32.onnx"
    encoder = ctx.student.encoder
    ox.export_image_encoder(ox.ImageEncoderForExport(encoder, tokens=opts.tokens), static, size, dynamic=False,
                            metadata=ctx.meta_for(role="image", precision=precision, target="tensorrt"))
    # Parity at batch 1: the static model takes one image at a time.
    worst = ox.parity_check(ox.ImageEncoderForExport(encoder, tokens=False), static, ctx.data.parity_images,
                            ort_batch=1)
    ctx.log(f"tensorrt static ONNX: parity with torch OK (min cosine {worst:.6f})")
    path = static
    extra: dict[str, Any] = {"parity_min_cosine": worst}
    if opts.int8:
        path = ctx.tmp / "image_static.onnx"
        calib = ctx.data.calibration_paths(opts.calibration_images)
        ctx.log(f"int8: calibrating on {len(calib)} training images (QDQ, symmetric, per-channel: TensorRT "
                "explicit quantization)")
        with ctx.progress("calibrating image_static.onnx", len(calib)) as advance:
            info = quantize_int8(static, path, ImageCalibration(calib, ctx.student.preprocess), VARIANTS["image_int8"],
                                 on_item=advance)
        extra["quantization"] = {**info, **qdq_properties(path)}
        ox.set_metadata(path, ctx.meta_for(role="image", precision="int8", target="tensorrt"))
    file_hash, _ = sha256_path(path)
    rel = trt_mod.STATIC_ONNX
    command = trt_mod.trtexec_command(rel, precision, engine=f"image-{precision}.engine")
    result = trt_mod.build_engine(path, precision, file_hash)
    ctx.log(result.message)
    if not result.built:
        ctx.log(f"to build it on the device: {command}")
    eval_images = ctx.data.eval_images
    emb = ox.run_image(ox.session(path, threads=2), eval_images, batch=1) if len(eval_images) else None
    note = ("quality measured with ONNX Runtime on this ONNX (fp32 math for fp16); the TensorRT engine itself "
            "is not measured here" if not result.built else "engine built")
    out = Artifacts(notes=[result.message])
    entry = ctx.onnx_entry(
        path, rel, "tensorrt-onnx", precision, static_shape=[1, 3, size, size], trtexec=command,
        onnx_sha256=file_hash, engine_built=result.built, engine_message=result.message,
        engine_cache={"dir": "$MALM_TRT_CACHE or ~/.cache/malm/tensorrt",
                      "key": "sm<major><minor>-trt<version>-<onnx sha256[:16]>",
                      **({"key_value": result.key, "path": str(result.engine)} if result.built else {})},
        **extra)
    out.add(path, rel, "image_tensorrt", entry, {**ctx.quality(emb, path), "note": note},
            variant=f"tensorrt_onnx_{precision}")
    return out
