"""The web client (clients/web) in headless chromium on this CPU: load time, query p50, bytes over the wire,
and parity with the Python SDK, on a bundle (the demo's: runs/demo/bundle).

    (cd clients/web && npm ci && npm run build)
    PYTHONPATH=. python benchmarks/web_client.py runs/demo/bundle runs/demo/data --out benchmarks/results/web_client

What it measures (one browser context per configuration, each a cold start: no HTTP cache):
- load: `Retriever.load(url)` from a local static server (fetch + SHA-256 of every file + onnxruntime-web's
  WASM compile + session creation), first and second time in the same page;
- query p50 (decode → preprocess → encoder → exact top 5) for a small photo (a test photo of DATA) and a
  12-megapixel JPEG (4032x3024, quality 90), with and without re-ranking;
- configurations: WASM 1 thread; WASM 2 threads (COOP/COEP served: cross-origin isolated); WebGPU when the
  browser offers an adapter (headless here: SwiftShader, a CPU rasteriser: correct, its timings meaningless);
- exact search over 3k / 10k / 100k vectors in the browser (is a graph index needed?);
- bytes: each web-bundle file raw, gzip -9 and brotli -11 (node's zlib), the runtime's too; recipes as JSON vs
  the SQLite store; float16 vs int8 vectors;
- parity on the first N test photos: embeddings vs `Retriever.embed` (same variant) and top-5 vs `search`.
Writes OUT.json and OUT.md with the machine (CPU features) it ran on.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' static server
from _static_server import CLIENT, client_dist, static_server  # noqa: E402

from benchmarks.machine import machine_info  # noqa: E402
from malm.web_bundle import export_web  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BASE_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]
WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader",
               "--use-webgpu-adapter=swiftshader"]
PAGE = """<!doctype html><meta charset=utf-8><title>malm web benchmark</title>
<script type=module>
import * as malm from "./lib/malm-web.js";
window.malm = malm;
window.b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
window.ready = true;
</script>"""

RUN = """async ([photos, opts, runs, rerank, warmup]) => {
    const t0 = performance.now();
    const r = await malm.Retriever.load("bundle/", opts);
    const first = performance.now() - t0;
    const t1 = performance.now();
    const r2 = await malm.Retriever.load("bundle/", opts);
    const second = performance.now() - t1;
    const out = {load_ms: first, load_again_ms: second, backend: r.backend, info: r.info(),
                 isolated: self.crossOriginIsolated, queries: {}};
    for (const [name, data] of Object.entries(photos)) {
        const bytes = b64(data);
        for (const rr of rerank && r.canRerank ? [false, true] : [false]) {
            const blob = new Blob([bytes], {type: "image/jpeg"});
            for (let i = 0; i < warmup; i++) await r.searchTimed(blob, {k: 5, rerank: rr});
            const rows = [];
            for (let i = 0; i < runs; i++) {
                const s = performance.now();
                const {timings} = await r.searchTimed(blob, {k: 5, rerank: rr});
                rows.push({total: performance.now() - s, ...timings});
            }
            out.queries[`${name}${rr ? "+rerank" : ""}`] = rows;
        }
    }
    return out;
}"""

PARITY = """async ([photos, enc]) => {
    const r = await malm.Retriever.load("bundle/", {encoder: enc});
    const out = [];
    for (const p of photos) {
        const e = await r.embed(b64(p));
        const hits = await r.search(b64(p), {k: 5});
        out.push({emb: Array.from(e.embedding), top: hits.map(h => h.recipe_id)});
    }
    return out;
}"""

SEARCH_SCALE = """async ([dim, sizes, runs]) => {
    const out = {};
    for (const n of sizes) {
        const v = new Float32Array(n * dim);
        for (let i = 0; i < v.length; i++) v[i] = Math.random() - 0.5;
        const labels = Int32Array.from({length: n}, (_, i) => i);
        const q = v.slice(0, dim);
        for (let i = 0; i < 3; i++) malm.topK(v, dim, q, 50, null, labels);
        const t = [];
        for (let i = 0; i < runs; i++) { const s = performance.now(); malm.topK(v, dim, q, 50, null, labels); t.push(performance.now() - s); }
        t.sort((a, b) => a - b);
        out[n] = t[Math.floor(t.length / 2)];
    }
    return out;
}"""


LATE_INTERACTION = """async ([patches, dim, candidates, tokens, runs]) => {
    const img = Float32Array.from({length: patches * dim}, () => Math.random() - 0.5);
    // The client normalises the recipes' tokens once at load; per query only the photo's patches.
    const recs = Array.from({length: candidates}, () => malm.unitRows(Float32Array.from({length: tokens * dim}, () => Math.random() - 0.5), dim));
    for (let i = 0; i < 3; i++) malm.lateInteraction(img, dim, recs, true);
    const t = [];
    for (let i = 0; i < runs; i++) { const s = performance.now(); malm.lateInteraction(img, dim, recs, true); t.push(performance.now() - s); }
    t.sort((a, b) => a - b);
    return t[Math.floor(t.length / 2)];
}"""


def compressed_sizes(paths: list[Path]) -> dict[str, dict[str, int]]:
    """raw / gzip -9 / brotli -11 bytes of each file (node's zlib: no extra Python dependency)."""
    script = ("const z=require('zlib'),fs=require('fs');const out={};for(const p of process.argv.slice(1)){"
              "const b=fs.readFileSync(p);out[p]={raw:b.length,gzip:z.gzipSync(b,{level:9}).length,"
              "brotli:z.brotliCompressSync(b,{params:{[z.constants.BROTLI_PARAM_QUALITY]:11,"
              "[z.constants.BROTLI_PARAM_SIZE_HINT]:b.length}}).length}}console.log(JSON.stringify(out))")
    res = subprocess.run(["node", "-e", script, *map(str, paths)], capture_output=True, text=True, check=True)
    return dict(json.loads(res.stdout))


def total(sizes: dict[str, dict[str, int]]) -> dict[str, int]:
    return {k: sum(v[k] for v in sizes.values()) for k in ("raw", "gzip", "brotli")}


def phone_jpeg(src: Path) -> bytes:
    """A test photo upscaled to 12 MP (4032x3024) with sensor-like noise, JPEG quality 90 (as phone_query.py)."""
    rng = np.random.default_rng(0)
    im = Image.open(src).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    noisy = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (3024, 4032, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def p50(rows: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def test_photos(data: Path, n: int) -> list[Path]:
    test = data / "images" / "test"
    return sorted((test if test.is_dir() else data).rglob("*.jpg"))[:n]


def run_config(pw: Any, www: Path, name: str, photos: dict[str, str], runs: int, warmup: int) -> dict[str, Any]:
    isolated = name == "wasm-2t"
    args = BASE_ARGS + (WEBGPU_ARGS if name == "webgpu" else ["--disable-gpu"])
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        with static_server(www, isolated=isolated) as url:
            page = browser.new_context().new_page()
            page.goto(url)
            page.wait_for_function("() => window.ready === true")
            if name == "webgpu":
                adapter = page.evaluate("""async () => {
                    if (!navigator.gpu) return null;
                    const a = await navigator.gpu.requestAdapter();
                    if (!a) return null;
                    const i = a.info || {};
                    return {vendor: i.vendor, architecture: i.architecture, description: i.description,
                            fallback: !!i.isFallbackAdapter};
                }""")
                if adapter is None:
                    return {"available": False, "why": "no WebGPU adapter in this headless chromium"}
            opts = {"threads": 2 if isolated else 1, "backend": "webgpu" if name == "webgpu" else "wasm"}
            if name == "webgpu":  # SwiftShader here: seconds per query, so a few runs say enough
                runs, warmup = min(runs, 5), min(warmup, 2)
            res = page.evaluate(RUN, [photos, opts, runs, True, warmup])
            res["runs"], res["warmup"] = runs, warmup
            res["available"] = True
            if name == "webgpu":
                res["adapter"] = adapter
            return res
    finally:
        browser.close()


def parity(pw: Any, www: Path, bundle: Path, photos: list[Path], variant: str,
           big: Path | None = None) -> dict[str, Any]:
    from malm.sdk import Retriever

    browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*BASE_ARGS, "--disable-gpu"])
    try:
        with static_server(www) as url:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("() => window.ready === true")
            extra = [big] if big else []
            js = page.evaluate(PARITY, [[base64.b64encode(p.read_bytes()).decode() for p in [*photos, *extra]],
                                        f"image_{variant}"])
    finally:
        browser.close()
    with Retriever.load(bundle, variant=variant) as r:
        emb = r.embed([*photos, *extra])
        tops = [[h.recipe_id for h in r.search(p, k=5)] for p in [*photos, *extra]]
    e = np.array([o["emb"] for o in js], np.float32)
    cos = (e * emb).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(emb, axis=1)
    same = [o["top"] == t for o, t in zip(js, tops, strict=True)]
    n = len(photos)
    out = {"variant": variant, "photos": n, "cosine_min": round(float(cos[:n].min()), 6),
           "cosine_mean": round(float(cos[:n].mean()), 6), "top5_identical": round(sum(same[:n]) / n, 4)}
    if big:
        out["12mp"] = {"cosine": round(float(cos[n]), 6), "top5_identical": bool(same[n])}
    return out


def parities(pw: Any, www: Path, bundle: Path, tests: list[Path], big: Path, default: str) -> list[dict[str, Any]]:
    """Browser vs SDK for the web bundle's default image encoder and for fp32, with float16 and int8 vectors."""
    out = []
    variants = list(dict.fromkeys([default.removeprefix("image_"), "fp32"]))
    for vectors in ("float16", "int8"):
        shutil.rmtree(www / "bundle", ignore_errors=True)
        export_web(bundle, www / "bundle", variants=variants, vectors=vectors)
        for v in variants:
            out.append({**parity(pw, www, bundle, tests, v, big if vectors == "float16" else None), "vectors": vectors})
    return out


def parity_only(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    result = json.loads(args.out.with_suffix(".json").read_text())
    tests = test_photos(args.data, args.parity_photos)
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp) / "www"
        shutil.copytree(client_dist(), www / "lib")
        (www / "index.html").write_text(PAGE)
        big = Path(tmp) / "12mp.jpg"
        big.write_bytes(phone_jpeg(tests[0]))
        with sync_playwright() as pw:
            result["parity"] = parities(pw, www, args.bundle, tests, big, "image_" + result["web_bundle"]["encoder"]
                                        .removeprefix("image_"))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path, help="Recipe1M-layout folder: its test photos are the queries")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/web_client"))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=20, help="queries before timing (WASM tiers up while it runs)")
    ap.add_argument("--parity-photos", type=int, default=60)
    ap.add_argument("--configs", default="wasm-1t,wasm-2t,webgpu")
    ap.add_argument("--parity-only", action="store_true", help="only (re)measure parity, into an existing OUT.json")
    args = ap.parse_args()
    if args.parity_only:
        parity_only(args)
        return
    from playwright.sync_api import sync_playwright

    dist = client_dist()
    result: dict[str, Any] = {"bundle": str(args.bundle), "machine": machine_info(),
                              "load_average_1m_before": round(os.getloadavg()[0], 2),
                              "browser": subprocess.run([CHROMIUM, "--version"], capture_output=True,
                                                        text=True).stdout.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp) / "www"
        www.mkdir()
        shutil.copytree(dist, www / "lib")
        (www / "index.html").write_text(PAGE)
        t = time.perf_counter()
        export_web(args.bundle, www / "bundle")
        result["export_s"] = round(time.perf_counter() - t, 2)
        m = json.loads((www / "bundle/manifest.json").read_text())
        result["web_bundle"] = {"recipes": m["recipes"]["count"], "dim": m["embedding"]["dim"],
                                "encoder": m["default_encoder"], "vectors": m["vectors"]["dtype"],
                                "rerank": (m.get("rerank") or {}).get("kind")}
        files = [www / "bundle" / rel for rel in m["files"]] + [www / "bundle/manifest.json"]
        sizes = compressed_sizes(files)
        result["bytes"] = {"files": {str(Path(p).relative_to(www / "bundle")): s for p, s in sizes.items()},
                           "total": total(sizes)}
        # What a first visit fetches to search: not the source manifest (provenance) nor the recipe encoder and
        # vocabulary (fetched when a recipe is added; the offline app's service worker caches them too).
        lazy = {(m.get("recipe_encoder") or {}).get("file"), (m.get("recipe_encoder") or {}).get("vocab")}
        fetched = {k: v for k, v in result["bytes"]["files"].items() if not k.startswith("source/") and k not in lazy}
        result["bytes"]["fetched"] = total(fetched)
        runtime = [www / "lib" / f for f in json.loads((www / "lib/files.json").read_text()) if "webgpu" not in f]
        result["bytes"]["runtime"] = total(compressed_sizes(runtime))
        # The alternatives: SQLite store instead of recipes.json; int8 vectors instead of float16.
        src_m = json.loads((args.bundle / "manifest.json").read_text())
        result["bytes"]["alternatives"] = {
            "recipes.json": sizes[str(www / "bundle/recipes.json")],
            "sqlite store": compressed_sizes([args.bundle / src_m["index"]["store"]])[
                str(args.bundle / src_m["index"]["store"])]}
        export_web(args.bundle, Path(tmp) / "int8v", vectors="int8", rerank=False)
        result["bytes"]["alternatives"]["vectors float16"] = sizes[str(www / "bundle/vectors.bin")]
        result["bytes"]["alternatives"]["vectors int8 + scales"] = total(compressed_sizes(
            [Path(tmp) / "int8v/vectors.bin", Path(tmp) / "int8v/vector_scales.bin"]))

        tests = test_photos(args.data, args.parity_photos)
        big = Path(tmp) / "12mp.jpg"
        big.write_bytes(phone_jpeg(tests[0]))
        photos = {"small": base64.b64encode(tests[0].read_bytes()).decode(),
                  "12mp": base64.b64encode(big.read_bytes()).decode()}
        with Image.open(tests[0]) as im:
            result["small_photo"] = f"{im.width}x{im.height} JPEG, {tests[0].stat().st_size} bytes"
        with sync_playwright() as pw:
            result["configs"] = {}
            for name in args.configs.split(","):
                res = run_config(pw, www, name, photos, args.runs, args.warmup)
                summary = {k: v for k, v in res.items() if k != "queries"}
                summary["p50_ms"] = {q: {key: p50(rows, key) for key in ("total", "decode_ms", "encode_ms",
                                                                          "search_ms", "rerank_ms")}
                                     for q, rows in res.get("queries", {}).items()}
                result["configs"][name] = summary
                print(name, json.dumps(summary.get("p50_ms")), flush=True)
            result["parity"] = parities(pw, www, args.bundle, tests, big, m["default_encoder"])
            page_browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*BASE_ARGS, "--disable-gpu"])
            export_web(args.bundle, www / "bundle", overwrite=True)
            with static_server(www) as url:
                page = page_browser.new_page()
                page.goto(url)
                page.wait_for_function("() => window.ready === true")
                result["exact_search_p50_ms"] = page.evaluate(SEARCH_SCALE, [m["embedding"]["dim"],
                                                                             [3000, 10000, 100000], 15])
                # Re-ranking cost where the bundle cannot re-rank: late interaction over 50 candidates with the
                # encoder's patch grid (size / 16)^2 and 32 recipe tokens of width `dim` each.
                grid = (m["preprocess"]["size"] // 16) ** 2
                result["late_interaction_p50_ms"] = {
                    "shape": f"{grid} patches x 50 candidates x 32 tokens x {m['embedding']['dim']}",
                    "ms": page.evaluate(LATE_INTERACTION, [grid, m["embedding"]["dim"], 50, 32, 15])}
            page_browser.close()
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    result["client"] = {"onnxruntime-web": json.loads((CLIENT / "package.json").read_text())["dependencies"]
                        ["onnxruntime-web"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(r: dict[str, Any]) -> str:
    b = r["bytes"]
    mb = 1e6
    lines = [f"# Web client in headless chromium ({r['browser']})", "",
             f"Bundle {r['bundle']}: {r['web_bundle']['recipes']} recipes, dim {r['web_bundle']['dim']}, "
             f"{r['web_bundle']['encoder']}, {r['web_bundle']['vectors']} vectors, re-rank "
             f"{r['web_bundle']['rerank']}. Machine: {r['machine'].get('cpu_model')}, "
             f"{r['machine'].get('cpu_usable')} usable cores ({' '.join(r['machine'].get('cpu_flags', []))}), load average {r['load_average_1m_before']} before and "
             f"{r['load_average_1m_after']} after (a shared machine: timings scale with it).", "",
             "| over the wire | raw MB | gzip MB | brotli MB |", "|---|---:|---:|---:|"]
    for name, t in (("web bundle (fetched to search)", b["fetched"]), ("web bundle (all files)", b["total"]),
                    ("runtime (malm-web.js + ORT WASM)", b["runtime"])):
        lines.append(f"| {name} | {t['raw'] / mb:.2f} | {t['gzip'] / mb:.2f} | {t['brotli'] / mb:.2f} |")
    for name, t in b["alternatives"].items():
        lines.append(f"| {name} | {t['raw'] / mb:.2f} | {t['gzip'] / mb:.2f} | {t['brotli'] / mb:.2f} |")
    lines += ["", "Query p50 in ms after the warm-up queries (load: `Retriever.load` in a cold browser context; again: "
              "a second load in the same page).", "",
              "| config | load ms | again ms | query | p50 total | decode | encode | search | rerank |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, c in r["configs"].items():
        if not c.get("available"):
            lines.append(f"| {name} | – | – | {c.get('why', 'not available')} | | | | | |")
            continue
        for q, p in c["p50_ms"].items():
            lines.append(f"| {name} | {c['load_ms']:.0f} | {c['load_again_ms']:.0f} | {q} | {p['total']} | "
                         f"{p['decode_ms']} | {p['encode_ms']} | {p['search_ms']} | {p['rerank_ms']} |")
    lines += ["", "Exact search p50 (top 50, one query) in the browser: " +
              ", ".join(f"{int(n):,} vectors {ms:.2f} ms" for n, ms in r["exact_search_p50_ms"].items()), ""]
    if "late_interaction_p50_ms" in r:
        li = r["late_interaction_p50_ms"]
        lines += [f"Late-interaction re-ranking alone ({li['shape']}): p50 {li['ms']:.2f} ms", ""]
    for p in r["parity"]:
        lines.append(f"Parity ({p['variant']}, {p['vectors']} vectors, {p['photos']} test photos): embedding "
                     f"cosine min {p['cosine_min']} mean {p['cosine_mean']}; top-5 identical "
                     f"{100 * p['top5_identical']:.1f}%" + (f"; the 12 MP JPEG: cosine {p['12mp']['cosine']}, top-5 "
                                                            f"identical {p['12mp']['top5_identical']}" if "12mp" in p else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
