"""p50 query latency (decode → preprocess → encoder → top 10) on phone-sized JPEGs, through the SDK.

    python benchmarks/phone_query.py BUNDLE DATA_DIR [--variant fp32|int8_cpu|int8] [--runs 15]

The photos are a benchmark photo upscaled to 12 MP (4032×3024) and 3 MP with sensor-like noise, saved at
JPEG quality 90. Prints one JSON line per size with the CPU features it ran on.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from malm.cpu_features import cpu_features
from malm.sdk import Retriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("data")
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    retriever = Retriever.load(args.bundle, threads=1, variant=args.variant)
    src = Image.open(next(Path(args.data).rglob("*.jpg"))).convert("RGB")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((4032, 3024), (2048, 1536)):
            noisy = np.asarray(src.resize((w, h), Image.BICUBIC)).astype(np.int16) + rng.integers(-6, 7, (h, w, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            path = Path(tmp) / f"phone_{w}x{h}.jpg"
            path.write_bytes(buf.getvalue())
            retriever.search(str(path), k=10)  # warm-up
            ms = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                retriever.search(str(path), k=10)
                ms.append((time.perf_counter() - t0) * 1000)
            print(json.dumps({"photo": f"{w}x{h}", "jpeg_mib": round(len(buf.getvalue()) / 2**20, 2),
                              "variant": retriever.backend.variant, "threads": 1,
                              "p50_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
                              "cpu": cpu_features().to_dict()["flags"]}))


if __name__ == "__main__":
    main()
