"""Encoder throughput (images/s at batch 1, 8, 32) and FLOPs per image against this CPU's measured peak.

The encoders alone, on preprocessed tensors, on all the threads the run uses: the teacher in torch eager,
the students in ONNX Runtime. `of peak` = FLOPs/image x images/s / measured fp32 sgemm GFLOP/s (peak
section); int8 kernels can in principle exceed the fp32 peak, so for int8 it reads as "fp32-equivalent".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.suite.context import Context
from benchmarks.suite.flops import onnx_flops, torch_flops
from benchmarks.suite.peak import peak_gflops
from benchmarks.suite.scales import Scale, scale_errors, scales
from benchmarks.suite.timing import Stats, measure, thread_limit

BATCHES = (1, 8, 32)


def _rows(ctx: Context, fn: Any, size: int, flops: float | None, threads: int, peak: float | None,
          slow: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for b in (1, 4) if ctx.options.quick else BATCHES:
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        # A big model at batch 32 takes seconds a call: fewer repetitions, still a median of several.
        reps = 2 if (slow and b > 8) else 3 if (slow and b > 1) or ctx.options.quick else 5
        # A big model's batch 32 is warm after batch 8 ran (same kernels): no separate warm-up call.
        warm = 0 if (slow and b > 8) else 1
        with thread_limit(threads):
            st: Stats = measure(lambda x=x: fn(x), min_time=0.1 if ctx.options.quick else 1.0, min_reps=reps, warmup=warm)
        ips = b / (st.p50_ms / 1e3)
        row: dict[str, Any] = {"batch": b, "images_per_s": round(ips, 2), "p50_ms": round(st.p50_ms, 3),
                               "p95_ms": round(st.p95_ms, 3)}
        if flops:
            achieved = flops * ips / 1e9
            row["achieved_gflops"] = round(achieved, 1)
            row["fraction_of_peak"] = round(achieved / peak, 3) if peak else None
        rows.append(row)
    return rows


def _scale(ctx: Context, scale: Scale, threads: int, peak: float | None) -> list[dict[str, Any]]:
    from malm.sdk.backends.ort import OrtImageBackend
    from malm.sdk.bundle_loader import open_bundle

    bundle = open_bundle(scale.bundle, check_hashes=False)
    size = bundle.preprocess.size
    out = []
    counted: dict[str, dict[str, Any]] = {}
    if scale.teacher is not None:
        import torch

        model = scale.teacher
        tsize = scale.teacher_preprocess.size

        def teacher(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return model.encode_image(torch.from_numpy(x))

        fl = torch_flops(model.encode_image, torch.zeros(1, 3, tsize, tsize))
        out.append({"scale": scale.key, "variant": "teacher_torch", "runtime": f"torch {torch.__version__} eager",
                    "input": f"{tsize}x{tsize}", "gflops_per_image": round(fl["gflops"], 3), "flops_method": fl["method"],
                    "params": sum(p.numel() for p in model.image_encoder.parameters()) + model.image_proj.weight.numel(),
                    "batches": _rows(ctx, teacher, tsize, fl["flops"], threads, peak, scale.key == "deployment")})
        ctx.log(f"encoder: {scale.key} teacher {fl['gflops']:.2f} GFLOP/img: "
                + ", ".join(f"b{r['batch']} {r['images_per_s']:.1f}/s" for r in out[-1]["batches"]))
    for variant in ("fp32", "int8", "int8_cpu"):
        entry = bundle.encoder(f"image_{variant}")
        if not entry:
            continue
        path = bundle.path(entry.file)
        backend = OrtImageBackend(path, variant, ["CPUExecutionProvider"], threads)
        try:
            fl = onnx_flops(path, size)
        except Exception as e:  # counting is a bonus; throughput still stands
            fl = {"flops": None, "gflops": None, "method": f"not counted ({type(e).__name__}: {e})"}
        counted[variant] = fl
        out.append({"scale": scale.key, "variant": f"student_{variant}", "runtime": "onnxruntime CPU",
                    "input": f"{size}x{size}", "gflops_per_image": None if fl["gflops"] is None else round(fl["gflops"], 3),
                    "flops_method": fl["method"], "file_bytes": path.stat().st_size,
                    "batches": _rows(ctx, lambda x, b=backend: b.encode(x), size, fl["flops"], threads, peak, False)})
        ctx.log(f"encoder: {scale.key} student_{variant}: "
                + ", ".join(f"b{r['batch']} {r['images_per_s']:.1f}/s" for r in out[-1]["batches"]))
    for name, path in scale.whatif.items():
        backend = OrtImageBackend(path, "int8", ["CPUExecutionProvider"], threads)
        fl = onnx_flops(path, size)
        if fl["nodes_unknown_shape"] and counted.get("fp32", {}).get("flops"):
            # Same graph as the fp32 student, quantized: its count stands (shape inference skips QLinearConv).
            fl = {**counted["fp32"], "method": counted["fp32"]["method"] + " (of the fp32 graph it quantizes)"}
        out.append({"scale": scale.key, "variant": name, "runtime": "onnxruntime CPU (what-if, not shipped)",
                    "input": f"{size}x{size}", "gflops_per_image": round(fl["gflops"], 3), "flops_method": fl["method"],
                    "file_bytes": path.stat().st_size,
                    "batches": _rows(ctx, lambda x, b=backend: b.encode(x), size, fl["flops"], threads, peak, False)})
        ctx.log(f"encoder: {scale.key} {name}: "
                + ", ".join(f"b{r['batch']} {r['images_per_s']:.1f}/s" for r in out[-1]["batches"]))
    return out


def run(ctx: Context) -> dict[str, Any]:
    threads = max(ctx.options.threads)
    peak_section = ctx.cache.get("peak")
    if peak_section is None:
        from benchmarks.suite import peak as peak_mod

        peak_section = peak_mod.run(ctx)
        ctx.cache["peak"] = peak_section
    peak = peak_gflops(peak_section, threads)
    variants: list[dict[str, Any]] = []
    for scale in scales(ctx):
        variants += _scale(ctx, scale, threads, peak)
    if not variants:
        # Nothing measured is a failure of the benchmark (an exit code), not a section that "cannot run here".
        raise RuntimeError("encoder: no encoder could be measured: " + str(scale_errors(ctx)))
    return {"threads": threads, "peak_gflops": peak, "batches": [1, 4] if ctx.options.quick else list(BATCHES), "variants": variants,
            "unavailable": scale_errors(ctx),
            "note": f"Encoders alone on {threads} thread(s), random inputs of the deployment shape; of peak = achieved "
                    f"GFLOP/s / measured fp32 sgemm peak ({peak} GFLOP/s at {threads} threads)."}
