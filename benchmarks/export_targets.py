"""Check `malm export` against the issue's targets and write benchmarks/results/export.{json,md}.

    .venv/bin/python benchmarks/export_targets.py --checkpoint runs/ht-tiny --data data/bench \
        [--distill-epochs 10] [--calib-images 500] [--speed-size 224] [--out benchmarks/results]

Targets (issue 5):
  * int8 student >= 2x faster than the fp32 student (ONNX Runtime, CPU, batch 1, p50; 1 thread and 2)
  * int8 student file <= 1/3.5 of the fp32 student's
  * image->recipe R@1 (1k, or all test pairs when fewer) drop int8 vs fp32 <= 1.5 points
  * student R@1 >= 90% of the teacher's

Quality is measured at the checkpoint's input size (what the bundle ships). Speed and size depend only on
the architecture and the input size, so they are also measured at `--speed-size` (224 = the deployment
resolution of the full presets) with the same distilled weights, re-exported and re-calibrated there.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def speed_at(run: Path, data: Path, size: int, calib_images: int, runs: int, report: dict[str, Any]) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from malm.export import onnx_export as ox
    from malm.export.distill import StudentFeatures
    from malm.export.exporter import _train_image_paths
    from malm.export.quantize import quantize_int8
    from malm.export.report import onnx_latency_ms, size_mb
    from malm.export.student import StudentConfig, StudentImageEncoder
    from malm.training.checkpoint import load_model
    from malm.training.data import prepare

    loaded = load_model(run)
    cfg = loaded.config
    pp = cfg.preprocess()
    pp = type(pp).for_size(size, mean=pp.mean, std=pp.std, interpolation=pp.interpolation)
    key = report["student_key"]
    cached = StudentConfig.from_dict(json.loads((run / "export-cache" / f"student-{key}.json").read_text())["student"])
    scfg = StudentConfig(embed_dim=cached.embed_dim, token_dim=cached.token_dim, image_size=size, mean=pp.mean, std=pp.std)
    student = StudentImageEncoder(scfg, pretrained=False)
    student.load_state_dict(load_file(str(run / "export-cache" / f"student-{key}.safetensors")))
    enc = StudentFeatures(student.eval())
    prepared = prepare(data, min_freq=cfg.data.min_freq, limits=cfg.data.limits())
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        ox.export_image_encoder(ox.ImageEncoderForExport(enc, tokens=False), fp32, size)
        quantize_int8(fp32, int8, _train_image_paths(prepared, calib_images), pp)
        out: dict[str, Any] = {"image_size": size, "fp32_mb": size_mb(fp32), "int8_mb": size_mb(int8)}
        for t in (1, 2):
            out[f"fp32_ms_{t}t"] = onnx_latency_ms(fp32, size, t, runs=runs)
            out[f"int8_ms_{t}t"] = onnx_latency_ms(int8, size, t, runs=runs)
        torch.set_num_threads(2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--distill-epochs", type=int, default=10)
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--speed-size", type=int, default=224)
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    from malm.export import ExportOptions, ExportRequest, run_export

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ExportOptions("onnx", int8=True, calib_images=args.calib_images, distill_epochs=args.distill_epochs,
                             eval_images=args.eval_images, recipe_encoder=False)
        report = run_export(ExportRequest(args.checkpoint, args.data, Path(tmp) / "bundle", opts,
                                          latency_runs=args.latency_runs))
    v = report["variants"]
    speed = speed_at(args.checkpoint, args.data, args.speed_size, args.calib_images, args.latency_runs, report)

    teacher_r1 = v["teacher_torch_fp32"]["retrieval"]["R@1"]
    fp32_r1 = v["image_fp32"]["retrieval"]["R@1"]
    int8_r1 = v["image_int8"]["retrieval"]["R@1"]
    checks = {
        "int8_speedup_1t_at_speed_size": {"value": speed["fp32_ms_1t"] / speed["int8_ms_1t"], "target": ">= 2.0"},
        "int8_speedup_2t_at_speed_size": {"value": speed["fp32_ms_2t"] / speed["int8_ms_2t"], "target": ">= 2.0"},
        "int8_speedup_1t_at_model_size": {"value": v["image_fp32"]["latency_ms_1t"] / v["image_int8"]["latency_ms_1t"],
                                          "target": ">= 2.0"},
        "int8_size_ratio": {"value": v["image_int8"]["size_mb"] / v["image_fp32"]["size_mb"], "target": "<= 0.2857"},
        "int8_R@1_drop_points": {"value": fp32_r1 - int8_r1, "target": "<= 1.5"},
        "student_R@1_fraction_of_teacher": {"value": fp32_r1 / teacher_r1 if teacher_r1 else float("nan"),
                                            "target": ">= 0.9"},
    }
    for c in checks.values():
        op, bound = c["target"].split()
        c["pass"] = bool(c["value"] >= float(bound)) if op == ">=" else bool(c["value"] <= float(bound))
    result = {"checks": checks, "speed": speed, "report": report, "seconds": time.monotonic() - started,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": __import__("os").cpu_count()},
              "args": {k: str(val) for k, val in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    from malm.export.report import to_markdown

    lines = ["# export targets", "", f"checkpoint `{args.checkpoint}`, data `{args.data}`, "
             f"{report['eval_pairs']} test pairs, distill epochs {args.distill_epochs}, calibration {args.calib_images}",
             "", "| check | value | target | pass |", "|---|---|---|---|"]
    lines += [f"| {k} | {c['value']:.3f} | {c['target']} | {'yes' if c['pass'] else 'NO'} |" for k, c in checks.items()]
    lines += ["", f"speed at {speed['image_size']}px: " + ", ".join(f"{k} {val:.3f}" for k, val in speed.items()
                                                               if k != "image_size"), "", to_markdown(report)]
    (args.out / "export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(c["pass"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
