"""Phone-sized query photos (12 MP and 3 MP JPEGs), made procedurally: a dish photo upscaled with sensor-like
noise, so the JPEG carries as much entropy-coded detail per pixel as a camera photo (decode time scales with it).

p50 query latency on them is measured twice: decoding every pixel (what the SDK did before), and in JPEG draft
mode (what it does now: the DCT-domain downscale to the smallest size the preprocessing needs).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.suite.context import Context
from benchmarks.suite.timing import measure, thread_limit

K = 10
# (label, width, height): an iPhone / Pixel main camera (12 MP, 4:3) and a 3 MP (a messaging app's resize).
PHONE_PHOTOS = (("12MP", 4032, 3024), ("3MP", 2016, 1512))


def phone_jpeg(base: Image.Image, width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """`base` upscaled to width x height plus gaussian noise (sigma 6: a phone sensor at indoor light), JPEG q90."""
    rng = np.random.default_rng(seed)
    big = np.asarray(base.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    # Noise in rows: a full 12 MP float array at once would be ~300 MB.
    out = np.empty((height, width, 3), np.uint8)
    for y in range(0, height, 512):
        block = big[y:y + 512] + rng.normal(0, 6, big[y:y + 512].shape).astype(np.int16)
        out[y:y + 512] = np.clip(block, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def cached_phone_jpeg(folder: Path, base: Image.Image, label: str, width: int, height: int) -> bytes:
    path = folder / f"phone_{label}_{width}x{height}.jpg"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(phone_jpeg(base, width, height))
    return path.read_bytes()


def phone_rows(ctx: Context, bundle: Path, base: Image.Image, threads: int, tm: dict[str, float]) -> list[dict[str, Any]]:
    """p50 / p95 of decode → top 10 on each phone photo, full decode ("before") and draft decode (the SDK now)."""
    from malm.sdk.image_io import load_image
    from malm.sdk.retriever import Retriever

    r = Retriever.load(bundle, threads=threads, verify=False)  # variant auto: int8_cpu on the CPU provider
    cfg = r.bundle.preprocess
    rows = []
    for label, width, height in PHONE_PHOTOS:
        photo = cached_phone_jpeg(ctx.options.work / "photos", base, label, width, height)
        for decode, min_side in (("full", 0), ("draft", cfg.resize)):
            def query(m: int = min_side, data: bytes = photo) -> list[Any]:
                if m:
                    return r.search(data, k=K)  # the SDK as shipped: draft decoding inside
                # Before: every pixel decoded first, then the same SDK search (a decoded image passes through).
                return r.search(load_image(data, cfg.max_pixels, 0), k=K)

            kw = {"min_time": tm["e2e_s"], "min_reps": int(tm["e2e_reps"])}
            with thread_limit(threads):
                e2e = measure(query, **kw)
                dec = measure(lambda m=min_side, data=photo: load_image(data, cfg.max_pixels, m), **kw)
            rows.append({"photo": f"{label} {width}x{height} JPEG q90", "bytes": len(photo), "decode": decode,
                         "variant": r.backend.variant, "device": r.backend.device, "threads": threads,
                         **e2e.to_dict(), "decode_p50_ms": round(dec.p50_ms, 3)})
            ctx.log(f"latency: {label} photo, {decode} decode, {r.backend.variant} {threads}t: "
                    f"p50 {e2e.p50_ms:.1f} ms (decode {dec.p50_ms:.1f} ms)")
    return rows
