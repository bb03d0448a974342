"""What the SDK's int8 self-check costs at load: first load on a machine vs a remembered one.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/selfcheck_cost.py [--size 224] [--repeats 3]

Builds a bundle like `malm export --int8` does at deployment shape (EfficientNet-Lite0 student, ImageNet
weights, 256-d head; fp32 + image_int8 + image_int8_cpu + self-check data; a 1000-recipe index of random
embeddings) and times `Retriever.load` with an empty cache (the check runs: on an x86 CPU without VNNI both
int8 encoders disagree and it falls back to fp32), then again (remembered). Writes
benchmarks/results/selfcheck-cost.{json,md} with the machine's CPU features.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.int8_cpu import photo_like  # noqa: E402
from benchmarks.machine import machine_info, summary_line  # noqa: E402


def build(root: Path, size: int, dim: int) -> Path:
    import torch

    from malm.bundle import BundleWriter
    from malm.edge_index.builder import Encoded, build_index
    from malm.edge_index.records import RecipeRecord
    from malm.export import int8_gate
    from malm.export import onnx_export as ox
    from malm.export.distill import StudentFeatures
    from malm.export.quantize import VARIANTS, ImageCalibration, calibration_batches, quantize_int8
    from malm.export.student import StudentConfig, StudentImageEncoder
    from malm.manifest import EmbeddingSection, EncoderEntry, PreprocessSection
    from malm.preprocess import PreprocessConfig

    torch.manual_seed(0)
    pp = PreprocessConfig.for_size(size)
    src = root / "src"
    src.mkdir(parents=True)
    student = StudentImageEncoder(StudentConfig(embed_dim=dim, token_dim=0, image_size=size)).eval()
    fp32 = ox.export_image_encoder(ox.ImageEncoderForExport(StudentFeatures(student).eval(), tokens=False),
                                   src / "image_fp32.onnx", size)
    calib = photo_like(src, 32, size, seed=1)
    files = [(fp32, "encoders/image_fp32.onnx")]
    for name, spec in VARIANTS.items():
        if not name.startswith("image_"):
            continue
        quantize_int8(fp32, src / f"{name}.onnx", ImageCalibration(calib, pp), spec)
        files.append((src / f"{name}.onnx", f"encoders/{name}.onnx"))
    held = np.concatenate(list(calibration_batches(photo_like(src, 8, size, seed=2), pp)))
    sc = int8_gate._write_selfcheck(fp32, held, src, files)
    bundle = root / "bundle"
    with BundleWriter(bundle) as bw:
        for path, rel in files:
            bw.add_file(path, rel)
            if rel.startswith("encoders/"):
                name = Path(rel).stem
                bw.set_encoder(name, EncoderEntry(rel, "onnx", "image", "fp32" if name == "image_fp32" else "int8"))
        bw.set_selfcheck(sc)
        bw.set_preprocess(PreprocessSection.from_dict(pp.to_dict()))
        bw.set_embedding(EmbeddingSection(dim))
    rng = np.random.default_rng(0)
    recs = [RecipeRecord(id=f"r{i}", title=f"recipe {i}", ingredients=("salt",), instructions=("cook.",))
            for i in range(1000)]
    build_index(bundle, recs, lambda rs: Encoded(rng.normal(size=(len(rs), dim)).astype(np.float32), None))
    return bundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    result: dict[str, Any] = {"machine": machine_info(), "size": args.size, "dim": args.dim, "loads": []}
    with tempfile.TemporaryDirectory(prefix="malm-sccost-") as tmp:
        bundle = build(Path(tmp), args.size, args.dim)
        os.environ["MALM_CACHE_DIR"] = str(Path(tmp) / "cache")
        from malm import Retriever

        Retriever.load(bundle, verify=False, variant="fp32")  # warm imports and the file cache
        for _ in range(args.repeats):
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)
            for kind, variant in (("first", "auto"), ("remembered", "auto"), ("fp32 asked for, remembered", "fp32")):
                t0 = time.perf_counter()
                r = Retriever.load(bundle, variant=variant)
                sc = r.info()["selfcheck"]
                result["loads"].append({"kind": kind, "load_s": round(time.perf_counter() - t0, 3),
                                        "check_s": sc["seconds"], "variant": r.backend.variant,
                                        "rejected": sc["rejected"], "cosine": round(sc["cosine"], 4)})
                print(result["loads"][-1], file=sys.stderr, flush=True)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    from malm._atomic import write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "selfcheck-cost.json", json.dumps(result, indent=2) + "\n")
    med = {k: float(np.median([x["load_s"] for x in result["loads"] if x["kind"] == k]))
           for k in ("first", "remembered", "fp32 asked for, remembered")}
    md = (f"# self-check cost at load ({args.size}px, {args.dim}-d, 1000 recipes)\n\nmachine: "
          f"{summary_line(result['machine'])}; load average {result['machine']['load_average']}\n\n"
          "Retriever.load with hash verification remembered; `first` runs the self-check (empty cache), "
          "`remembered` recalls it; the last row is the baseline without any fallback.\n\n"
          "| load | median s | encoder that ran | rejected |\n|---|---|---|---|\n" +
          "".join(f"| {k} | {med[k]:.3f} | {result['loads'][i]['variant']} | "
                  f"{', '.join(x['encoder'] for x in result['loads'][i]['rejected']) or '-'} |\n"
                  for i, k in enumerate(("first", "remembered", "fp32 asked for, remembered"))))
    write_text_atomic(args.out / "selfcheck-cost.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
