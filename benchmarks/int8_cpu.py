"""Which int8 form is right (and fast) on this CPU: writes benchmarks/results/int8-cpu.{json,md}.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_cpu.py [--sizes 32 224] [--runs 20]

x86 ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW when the CPU has no VNNI: it
sums pairs of u8*s8 products in 16 bits and saturates (255*127*2 > 32767). Each candidate quantization is
measured three ways on held-out images: cosine to fp32 with this CPU's kernels, cosine to fp32 of the model's
exact QDQ math (ORT with graph optimization off: dequantize, compute in float -- what an int32-accumulating
runtime such as TensorRT or a VNNI CPU computes), and the two against each other (1.0 = no saturation here).
"id_R@1" is the share of held-out images whose int8 embedding finds its own fp32 embedding first among all
held-out images (a retrieval check that needs no trained model). Speed: batch 1, 1 thread, p50 of
round-robin runs (a busy machine slows all models alike; the ratio to fp32 is what to read).

The encoder is the export's student (EfficientNet-Lite0, ImageNet weights, a random projection head): the
R@1 drop on the real benchmark comes from `malm export`'s int8 gate (its report), not from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import machine_info, summary_line  # noqa: E402

# name -> Int8Spec fields; image_int8 / image_int8_cpu are what `malm export` ships (quantize.VARIANTS).
# Speeds at 32px are a few ms and very noisy on a loaded machine; read the 224px ratios.
CANDIDATES: dict[str, dict[str, Any]] = {
    "s8s8 (image_int8, TensorRT format)": {"activations": "symmetric"},
    "s8s8 7-bit weights": {"activations": "symmetric", "reduce_range": True},
    "u8s8 8-bit weights (image_int8_cpu)": {"activations": "asymmetric"},
    "u8s8 7-bit weights everywhere": {"activations": "asymmetric", "reduce_range": True},
    "u8s8 7-bit dense weights (reduce_range=gemm)": {"activations": "asymmetric", "reduce_range": "gemm"},
    "u8u8": {"activations": "asymmetric", "weights": "uint8"},
}


def photo_like(root: Path, n: int, size: int, seed: int) -> list[Path]:
    """Smooth colour gradients + texture + noise at varied sizes (photo-like statistics, no data download)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(size + 8, size * 2)), int(rng.integers(size + 8, size * 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, 3) + np.stack([xx, yy, xx + yy], -1) * rng.uniform(-200, 200, 3)
        texture = 30 * np.sin(xx[..., None] * rng.uniform(5, 40, 3) + yy[..., None] * rng.uniform(5, 40, 3))
        pix = np.clip(base + texture + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(root / f"img{seed}_{i}.jpg")
        Image.fromarray(pix).save(paths[-1])
    return paths


def p50_round_robin(sessions: dict[str, Any], x: np.ndarray, runs: int, warmup: int = 1) -> dict[str, float]:
    """Median ms per session, timed in turn (one round over every model per run) so load drifts hit all alike."""
    for s in sessions.values():
        for _ in range(warmup):
            s.run(["embedding"], {"image": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(["embedding"], {"image": x})
            times[k].append(time.perf_counter() - t0)
    return {k: round(float(np.median(v)) * 1000, 3) for k, v in times.items()}


def id_recall_at_1(q: np.ndarray, gallery: np.ndarray) -> float:
    from malm.export.onnx_export import cosine_rows

    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    assert cosine_rows(qn, qn).min() > 0.999
    return float(((qn @ gn.T).argmax(1) == np.arange(len(q))).mean() * 100)


def measure_size(size: int, embed_dim: int, n_calib: int, n_held: int, runs: int, tmp: Path) -> dict[str, Any]:
    import torch

    from malm.export import onnx_export as ox
    from malm.export.distill import StudentFeatures
    from malm.export.quantize import (
        ImageCalibration,
        Int8Spec,
        calibration_batches,
        exact_session,
        quantize_int8,
    )
    from malm.export.student import StudentConfig, StudentImageEncoder
    from malm.preprocess import PreprocessConfig

    torch.manual_seed(0)
    pp = PreprocessConfig.for_size(size)
    student = StudentImageEncoder(StudentConfig(embed_dim=embed_dim, token_dim=0, image_size=size)).eval()
    fp32 = ox.export_image_encoder(ox.ImageEncoderForExport(StudentFeatures(student).eval(), tokens=False),
                                   tmp / f"fp32_{size}.onnx", size)
    calib = photo_like(tmp, n_calib, size, seed=1)
    held = np.concatenate(list(calibration_batches(photo_like(tmp, n_held, size, seed=2), pp)))
    ref = ox.run_image(ox.session(fp32), held)
    rows: dict[str, Any] = {"fp32": {"size_mb": round(fp32.stat().st_size / 1e6, 3)}}
    paths = {"fp32": fp32}
    for name, kw in CANDIDATES.items():
        out = tmp / f"{len(paths)}_{size}.onnx"
        quantize_int8(fp32, out, ImageCalibration(calib, pp), Int8Spec(**kw))
        here = ox.run_image(ox.session(out), held)
        exact = ox.run_image(exact_session(out), held)
        c_here, c_exact = ox.cosine_rows(ref, here), ox.cosine_rows(ref, exact)
        rows[name] = {"options": {k: v for k, v in kw.items()}, "size_mb": round(out.stat().st_size / 1e6, 3),
                      "cosine_mean_this_cpu": round(float(c_here.mean()), 4),
                      "cosine_min_this_cpu": round(float(c_here.min()), 4),
                      "cosine_mean_exact_qdq": round(float(c_exact.mean()), 4),
                      "cosine_kernel_vs_exact": round(float(ox.cosine_rows(here, exact).mean()), 4),
                      "id_R@1_this_cpu": id_recall_at_1(here, ref), "id_R@1_fp32": id_recall_at_1(ref, ref)}
        paths[name] = out
        print(f"  {size}px {name}: {rows[name]}", file=sys.stderr, flush=True)
    sessions = {k: ox.session(p, threads=1) for k, p in paths.items()}
    speed = p50_round_robin(sessions, held[:1], runs)
    for k, ms in speed.items():
        rows[k]["p50_ms_1t"] = ms
        rows[k]["x_fp32_1t"] = round(speed["fp32"] / ms, 3)
    return {"size": size, "embed_dim": embed_dim, "calibration_images": n_calib, "held_out_images": n_held,
            "runs": runs, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# int8 forms on this CPU", "", f"machine: {summary_line(m)}; load average at start "
             f"{m.get('load_average')}", ""]
    for r in result["sizes"]:
        lines += [f"## {r['size']}px, embedding {r['embed_dim']}, {r['calibration_images']} calibration / "
                  f"{r['held_out_images']} held-out images, p50 of {r['runs']} round-robin runs", "",
                  "| model | MB | cos mean (this CPU) | cos min (this CPU) | cos mean (exact QDQ) | kernel vs exact "
                  "| id R@1 | p50 ms 1t | x fp32 |", "|---|---|---|---|---|---|---|---|---|"]
        for name, row in r["rows"].items():
            cells = [row.get(k, "–") for k in ("size_mb", "cosine_mean_this_cpu", "cosine_min_this_cpu",
                                               "cosine_mean_exact_qdq", "cosine_kernel_vs_exact", "id_R@1_this_cpu",
                                               "p50_ms_1t", "x_fp32_1t")]
            lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--held-out", type=int, default=32)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    result: dict[str, Any] = {"machine": machine_info(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="malm-int8cpu-") as tmp:
        for size in args.sizes:
            # 16-d at 32px is the test fixture; 256-d at 224px is the deployment shape.
            result["sizes"].append(measure_size(size, 16 if size <= 64 else 256, args.calib, args.held_out,
                                                args.runs, Path(tmp)))
    result["machine"]["load_average_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    from malm._atomic import write_text_atomic

    write_text_atomic(args.out / "int8-cpu.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(args.out / "int8-cpu.md", to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
