"""Write benchmark results: `bench.json` (everything) and `bench.md` (the tables README shows).

Both are written atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from malm._atomic import write_text_atomic

JSON_NAME = "bench.json"
MD_NAME = "bench.md"


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / JSON_NAME, out / MD_NAME
    write_text_atomic(jpath, json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    write_text_atomic(mpath, markdown(results))
    return jpath, mpath


def load(out: Path) -> dict[str, Any] | None:
    path = out / JSON_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _status(section: Any) -> str | None:
    """A line for a section that did not produce numbers."""
    if not isinstance(section, dict):
        return "_not run_"
    if "skipped" in section:
        return f"_skipped: {section['skipped']}_"
    if "error" in section:
        return f"_failed: {section['error']}_"
    return None


def markdown(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    s = r.get("sections", {})
    parts = [
        f"# malm benchmarks{' (quick smoke run: sizes too small to quote)' if r.get('mode') == 'quick' else ''}\n",
        f"Command: `{r.get('command', '')}`  \n"
        f"Run: {r.get('started', '?')} → {r.get('finished', '?')} ({r.get('duration_s', 0):.0f} s)  \n"
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_usable', '?')} usable cores "
        f"({', '.join(m.get('cpu_flags', []))}), {(m.get('memory_bytes') or 0) / 2**30:.0f} GiB, "
        f"load at start {m.get('load_average')}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items() if v)
        + f"; git {m.get('git_commit')}\n",
        "Noisy, shared machine: compare rows as ratios within this run; medians (p50) and p95 of repeated runs.\n",
    ]
    art = r.get("artifacts")
    if art:
        parts.append(f"Model measured: {art.get('description', '')}\n")

    parts.append("## Targets\n")
    parts.append(_table(["target", "goal", "measured", "ratio", "met"],
                        [[t["target"], t["goal"], t["measured"], t["ratio"],
                          {True: "yes", False: "**no**", None: "–"}[t["passed"]]] for t in r.get("targets", [])]))
    notes = [f"- {t['target']}: {t['note']}" for t in r.get("targets", []) if t.get("note")]
    if notes:
        parts.append("\n".join(notes) + "\n")

    parts.append("## 1. Query latency (decode → preprocess → encode → search)\n")
    lat = s.get("latency")
    st = _status(lat)
    if st:
        parts.append(st + "\n")
    else:
        parts.append(f"Photo: {lat.get('photo')}; top-{lat.get('k')}. Stage columns are p50 ms of each stage "
                     "timed alone. Scales:\n")
        parts.append("\n".join(f"- **{sc['key']}**: {sc['description']}; teacher: {sc['teacher']}"
                                for sc in lat.get("scales", [])) + "\n")
        for key, why in (lat.get("unavailable") or {}).items():
            parts.append(f"- {key}: not measured ({why})\n")
        parts.append(_table(["scale", "variant", "threads", "p50 ms", "p95 ms", "decode", "preprocess", "encode",
                             "search", "re-rank", "x teacher (e2e)", "x teacher (encode)"],
                            [[e["scale"], e["variant"], e["threads"], e["p50_ms"], e["p95_ms"],
                              *(e["stages_p50_ms"].get(k) for k in ("decode", "preprocess", "encode", "search", "rerank")),
                              e.get("speedup_vs_teacher"), e.get("encode_speedup_vs_teacher")]
                             for e in lat.get("end_to_end", [])]))
        if lat.get("phone_photos"):
            parts.append("\nPhone-sized photos (decode → top 10 through `Retriever.search`): every pixel decoded "
                         "(before) vs JPEG draft decoding (the SDK now).\n")
            parts.append(_table(["photo", "KiB", "decode", "variant", "threads", "p50 ms", "p95 ms", "decode p50 ms"],
                                [[e["photo"], round(e["bytes"] / 1024), e["decode"], e["variant"], e["threads"],
                                  e["p50_ms"], e["p95_ms"], e["decode_p50_ms"]] for e in lat["phone_photos"]]))

    parts.append("## 2. Encoder throughput and FLOPs\n")
    enc = s.get("encoder")
    st = _status(enc)
    if st:
        parts.append(st + "\n")
    else:
        parts.append(enc.get("note", "") + "\n")
        rows = []
        for e in enc.get("variants", []):
            for b in e.get("batches", []):
                rows.append([e["scale"], e["variant"], e.get("input"), b["batch"], b["images_per_s"],
                             e.get("gflops_per_image"), b.get("achieved_gflops"), b.get("fraction_of_peak")])
        parts.append(_table(["scale", "variant", "input", "batch", "images/s", "GFLOP/image", "GFLOP/s", "of peak"],
                            rows))
    pk = s.get("peak")
    if isinstance(pk, dict) and "gflops" in pk:
        parts.append("\nPeak (" + pk["method"] + "): "
                     + "; ".join(f"{t} thread(s): " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in row.items())
                                 for t, row in pk["gflops"].items()) + "\n")

    parts.append("## 3. Index at scale\n")
    idx = s.get("index")
    st = _status(idx)
    if st:
        parts.append(st + "\n")
    else:
        if idx.get("stopped"):
            parts.append(f"**Incomplete:** {idx['stopped']}.\n")
        parts.append(f"dim {idx['dim']}, k={idx['k']}, {idx['queries']} queries; graph {idx['graph']} "
                     f"({idx['graph_source']}). Vectors: {idx['vectors']}. {idx['qps_definition']}.\n\n")
        rows = []
        for e in idx["sizes"]:
            for key, v in e["results"].items():
                if "skipped" in v:
                    rows.append([f"{e['n']:,}", key, None, None, None, None, None, None, "skipped: " + v["skipped"]])
                    continue
                rows.append([f"{e['n']:,}", v["library"], v["build_s"], v["bytes_per_recipe"], v["recall@10"],
                             v["qps_1query_1thread"], v.get("speedup_vs_exact_1query"), v["qps_batch"],
                             f"batch on {v['batch_threads']} thread(s), x{v.get('speedup_vs_exact_batch')} exact"])
        parts.append(_table(["n", "library", "build s", "bytes/recipe", "recall@10", "QPS (1 query)",
                             "x exact", "QPS (batch)", "note"], rows))
        sweeps = [(e["n"], e["results"]["hnswlib"]["ef_sweep"]) for e in idx["sizes"]
                  if "ef_sweep" in e["results"].get("hnswlib", {})]
        for n, sweep in sweeps:
            parts.append(f"\nhnswlib ef_search sweep at n={n:,}: "
                         + "; ".join(f"ef {p['ef_search']}: recall {p['recall@10']:.3f}, {p['qps_1query_1thread']:,.0f} QPS"
                                     for p in sweep) + "\n")

    parts.append("## 4. Training: where the time goes\n")
    tr = s.get("training")
    st = _status(tr)
    if st:
        parts.append(st + "\n")
    else:
        parts.append(tr.get("note", "") + "\n")
        parts.append(f"Device: {tr.get('device')}; load average at the end {tr.get('load_average')}.\n")
        parts.append(_table(["loader workers", "source", "images/s", "images/s per worker", "images/CPU-s",
                             "cache build s"],
                            [[e["workers"], "uint8 cache" if e["cached"] else "decode JPEG", e["images_per_s"],
                              e["images_per_s_per_worker"], e.get("images_per_cpu_s"), e.get("cache_build_s")]
                             for e in tr.get("loader", [])]))
        parts.append(_table(["preset", "batch", "step alone img/s", "GFLOP/img", "MFU", "full loop img/s",
                             "data wait", "epoch end s", "epoch end share", "peak GPU MiB"],
                            [[e["preset"], e["batch"], e["step"]["images_per_s"], e["step"]["gflop_per_image"],
                              e["step"]["mfu"], e["full_loop"]["images_per_s"], e["full_loop"]["data_wait_share"],
                              e["full_loop"]["epoch_end_s"], e["full_loop"]["epoch_end_share"],
                              e["full_loop"].get("peak_mem_mib")] for e in tr.get("presets", [])]))

    parts.append("## 5. Bundle size\n")
    bs = s.get("bundle")
    st = _status(bs)
    if st:
        parts.append(st + "\n")
    else:
        for b in bs.get("bundles", []):
            parts.append(f"**{b['scale']}** bundle ({b['recipes']:,} recipes):\n")
            parts.append(_table(["file", "role", "variant", "MiB"],
                                [[f["file"], f.get("role", ""), f.get("variant", ""), f["bytes"] / 2**20]
                                 for f in b.get("files", [])]))
            parts.append(f"\nTotal {b['total_bytes'] / 2**20:.2f} MiB; " + "; ".join(
                f"{k}: {v / 2**20:.2f} MiB" for k, v in b.get("per_variant_bytes", {}).items()) + "\n")

    parts.append("## Cold start\n")
    cs = s.get("cold_start")
    st = _status(cs)
    if st:
        parts.append(st + "\n")
    else:
        parts.append(f"`{cs['command']}` on a {cs['recipes']:,}-recipe bundle, {cs['runs']} runs: p50 {cs['p50_s']:.3f} s, "
                     f"p95 {cs['p95_s']:.3f} s (python alone {cs.get('python_p50_s', 0):.3f} s, python + malm imports "
                     f"{cs.get('import_p50_s', 0):.3f} s). {cs.get('note', '')}. Torch imported by the CLI: "
                     f"{cs.get('torch_imported_by_cli')}. Inside `Retriever.load` (s): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in (cs.get("load_breakdown_s") or {}).items()) + "\n")
    errors = [f"- {k}: {v.get('error')}" for k, v in s.items() if isinstance(v, dict) and "error" in v]
    if errors:
        parts.append("## Failures\n" + "\n".join(errors) + "\n")
    return "\n".join(parts)
