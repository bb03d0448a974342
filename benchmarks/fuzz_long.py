"""Long fuzz run over image decoding and manifest parsing, and a query soak for memory growth.

    python -m benchmarks.fuzz_long --minutes 10                 # mutation fuzz, both targets
    python -m benchmarks.fuzz_long --target image --iterations 200000
    python -m benchmarks.fuzz_long --soak 10000                 # 10k queries: RSS / tracemalloc growth
    python -m benchmarks.fuzz_long --atheris -- -max_total_time=600   # coverage-guided, if atheris is installed

Each input is mutated from a seed corpus (valid PNG/JPEG/GIF/WebP/BMP/TIFF files in many modes, and a real
manifest) by byte flips, truncation, insertion, splicing and JSON-level edits. Every outcome must be a result
or a `MalmError` (`ImageError` / `BundleError`); anything else is a crash, saved under --out with its input.
The summary (JSON on stdout and in --out/summary.json) is what docs/reliability.md reports.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import random
import resource
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from malm.bundle import FORMAT, FORMAT_VERSION, read_manifest
from malm.errors import MalmError
from malm.preprocess import PreprocessConfig, preprocess
from malm.sdk.image_io import load_image

CFG = PreprocessConfig(size=32, resize=36, max_pixels=4_000_000)


def image_corpus() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out = []
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16"):
        for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"):
            try:
                img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
                    np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
                buf = io.BytesIO()
                img.save(buf, fmt)
                out.append(buf.getvalue())
            except (OSError, ValueError, KeyError):
                continue  # the format cannot hold that mode
    return out


def manifest_seed() -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "files": {
        "encoders/image_fp32.onnx": {"sha256": "0" * 64, "bytes": 10},
        "index/recipes.hnsw": {"sha256": "1" * 64, "bytes": 20}},
        "encoders": {"image_fp32": {"file": "encoders/image_fp32.onnx", "kind": "onnx", "role": "image"}},
        "index": {"file": "index/recipes.hnsw", "store": "index/recipes.sqlite", "dim": 16, "M": 16},
        "preprocess": CFG.to_dict(), "embedding": {"dim": 16, "metric": "cosine"}}


def mutate_bytes(data: bytes, rnd: random.Random, corpus: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        op = rnd.randrange(6)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b = b[: rnd.randrange(len(b) + 1)]
        elif op == 2:
            i = rnd.randrange(len(b) + 1)
            b[i:i] = rnd.randbytes(rnd.randint(1, 16))
        elif op == 3 and b:
            i = rnd.randrange(len(b))
            b[i:i + 4] = rnd.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"])
        elif op == 4:
            other = rnd.choice(corpus)
            cut = rnd.randrange(len(other) + 1)
            b = b[: rnd.randrange(len(b) + 1)] + other[cut:]
        elif op == 5 and len(b) > 8:
            i, j = sorted(rnd.sample(range(len(b)), 2))
            b[i:j] = b[i:j][::-1]
    return bytes(b)


_VALUES: list[Any] = [None, True, 0, -1, 2**63, 1.5, float("nan"), "", "..", "../x", "/etc/passwd", "a\\b", [], {},
                      [1], {"a": 1}, "x" * 1000, "\ud800"]


def mutate_manifest(seed: dict[str, Any], rnd: random.Random) -> bytes:
    m = json.loads(json.dumps(seed))
    for _ in range(rnd.randint(1, 4)):
        node: Any = m
        path = []
        while isinstance(node, dict) and node and rnd.random() < 0.7:
            key = rnd.choice(list(node))
            path.append((node, key))
            node = node[key]
        if not path:
            m[rnd.choice(["files", "encoders", "index", "format_version", "x"])] = copy.deepcopy(rnd.choice(_VALUES))
            continue
        parent, key = path[-1]
        if rnd.random() < 0.3:
            parent[rnd.choice(_VALUES[8:12] + ["k"])] = parent.pop(key)  # rename the key
        else:
            parent[key] = copy.deepcopy(rnd.choice(_VALUES))
    text = json.dumps(m, allow_nan=True)
    if rnd.random() < 0.2:
        return mutate_bytes(text.encode("utf-8", "surrogatepass"), rnd, [text.encode("utf-8", "surrogatepass")])
    return text.encode("utf-8", "surrogatepass")


def run_image(data: bytes) -> str:
    try:
        img = load_image(data, max_pixels=CFG.max_pixels)
        x = preprocess(img, CFG)
    except MalmError:
        return "clear_error"
    if x.shape != (3, CFG.size, CFG.size) or not np.isfinite(x).all():
        raise AssertionError(f"bad preprocess output {x.shape} finite={np.isfinite(x).all()}")
    return "ok"


def run_manifest(data: bytes, root: Path) -> str:
    (root / "manifest.json").write_bytes(data)
    try:
        m = read_manifest(root)
    except MalmError:
        return "clear_error"
    for rel in m["files"]:
        if not (root / rel).resolve().is_relative_to(root.resolve()):
            raise AssertionError(f"accepted a file outside the bundle: {rel!r}")
    return "ok"


def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    warnings.simplefilter("ignore")  # Pillow warns on every corrupt EXIF/TIFF tag: only outcomes matter here
    rnd = random.Random(args.seed)
    corpus = image_corpus()
    seed_m = manifest_seed()
    out = Path(args.out)
    (out / "crashes").mkdir(parents=True, exist_ok=True)
    mroot = out / "manifest-dir"
    mroot.mkdir(exist_ok=True)
    if not (mroot / "link").exists():
        (mroot / "link").symlink_to("/etc")
    counts: dict[str, Counter[str]] = {"image": Counter(), "manifest": Counter()}
    deadline = time.monotonic() + args.minutes * 60
    targets = ["image", "manifest"] if args.target == "both" else [args.target]
    i = 0
    while i < args.iterations and time.monotonic() < deadline:
        target = targets[i % len(targets)]
        data = mutate_bytes(rnd.choice(corpus), rnd, corpus) if target == "image" else mutate_manifest(seed_m, rnd)
        try:
            outcome = run_image(data) if target == "image" else run_manifest(data, mroot)
        except Exception:  # noqa: BLE001 - a crash is what we are looking for: record it, go on
            outcome = "crash"
            n = sum(c["crash"] for c in counts.values())
            (out / "crashes" / f"{target}-{n}.bin").write_bytes(data)
            (out / "crashes" / f"{target}-{n}.txt").write_text(traceback.format_exc())
        counts[target][outcome] += 1
        i += 1
    summary = {"iterations": i, "seed": args.seed, "seconds": round(args.minutes * 60 - max(0.0, deadline - time.monotonic()), 1),
               **{t: dict(c) for t, c in counts.items() if t in targets}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def soak(n: int) -> dict[str, Any]:
    """`n` queries on one Retriever (tiny test bundle): Python heap and RSS growth after a warm-up."""
    import tempfile
    import tracemalloc

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _sdk_bundle import make_bundle, photo

    from malm.sdk import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        r = Retriever.load(make_bundle(Path(tmp) / "bundle", 200), threads=1)
        photos = [np.asarray(photo(i)) for i in range(16)]
        for i in range(500):
            r.search(photos[i % 16], k=10)
        tracemalloc.start()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        heap0, _ = tracemalloc.get_traced_memory()
        t0 = time.perf_counter()
        for i in range(n):
            r.search(photos[i % 16], k=10)
        secs = time.perf_counter() - t0
        heap1, _ = tracemalloc.get_traced_memory()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.stop()
    return {"queries": n, "seconds": round(secs, 2), "python_heap_growth_kb": round((heap1 - heap0) / 1024, 1),
            "max_rss_growth_kb": rss1 - rss0}


def run_atheris(argv: list[str]) -> None:
    import atheris  # type: ignore[import-not-found]

    root = Path(os.environ.get("MALM_FUZZ_DIR", "fuzz-out")) / "manifest-dir"
    root.mkdir(parents=True, exist_ok=True)

    def one(data: bytes) -> None:
        run_image(data)
        run_manifest(data, root)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=["image", "manifest", "both"], default="both")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--iterations", type=int, default=10**9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fuzz-out")
    p.add_argument("--soak", type=int, default=0, help="run N queries and report memory growth instead")
    p.add_argument("--atheris", action="store_true", help="coverage-guided run with atheris (pip install atheris)")
    args, rest = p.parse_known_args()
    if args.atheris:
        run_atheris([a for a in rest if a != "--"])
        return
    result = soak(args.soak) if args.soak else fuzz(args)
    print(json.dumps(result, indent=2))
    if not args.soak and any(result.get(t, {}).get("crash") for t in ("image", "manifest")):
        sys.exit(1)


if __name__ == "__main__":
    main()
