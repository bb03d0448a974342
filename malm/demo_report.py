"""`runs/demo/report.html`: what the demo found, as a page a person can look at.

One self-contained file (photos embedded as data URIs, the chart an inline SVG, no script, no network):
the query photos (a seeded random sample; the page says how they were chosen) with their top-5 recipes before
and after re-ranking (title, ingredients, score, the true one marked), top-1/top-5 of every test photo through
the SDK with and without re-ranking (ms added, the weight), R@1/R@5 of each exported variant, and the training curve (loss per logged step, validation image→recipe R@1 per epoch).

    from malm.demo_report import write_report
    write_report(Path("runs/demo/report.html"), summary, Path("runs/demo/run/metrics.jsonl"))

Stdlib only, like `malm.demo`.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from pathlib import Path
from typing import Any

from malm._atomic import write_text_atomic

# The variants the page compares, in order, with the names a reader understands.
VARIANTS = (
    ("teacher_torch_fp32", "teacher (torch fp32)"),
    ("student_torch_fp32", "student EfficientNet-Lite0 (torch fp32)"),
    ("image_fp32", "student ONNX fp32"),
    ("image_int8", "student int8 QDQ (ONNX)"),
    ("image_int8_cpu", "student int8, uint8 activations (CPU)"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:22px 0 8px} .sub{color:#666;font-size:13px}
table.metrics{border-collapse:collapse;font-size:13px} table.metrics td,table.metrics th{border-bottom:1px solid #ddd;
padding:3px 10px;text-align:right} table.metrics td:first-child,table.metrics th:first-child{text-align:left}
.query{display:flex;gap:14px;border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.query img{width:128px;height:128px;object-fit:cover;border-radius:4px;flex:none}
.query ol{margin:0;padding-left:22px;font-size:13px} .query li{margin:2px 0}
.true{background:#e3f6e3;font-weight:600} .score{color:#666;font-variant-numeric:tabular-nums}
.ingr{color:#666;font-weight:400} .found{color:#1a7f37} .missed{color:#b3261e} .charts{display:flex;gap:18px}
"""


def write_report(path: Path, summary: dict[str, Any], metrics_path: Path | None = None) -> Path:
    """Render the page for a demo `summary` (see `malm.demo`) and write it atomically to `path`."""
    write_text_atomic(path, render_report(summary, _read_metrics(metrics_path)))
    return path


def render_report(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    queries = summary.get("queries", [])
    in_top5 = sum(1 for q in queries if q.get("rank"))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>malm demo report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>malm demo: which recipe is this photo?</h1>",
        f"<p class='sub'>{_e(summary.get('benchmark', ''))} · model <b>{_e(summary.get('preset', ''))}</b> · "
        f"true recipe in the top 5 for <b id='top5-count'>{in_top5}/{len(queries)}</b> shown photos, "
        f"at rank 1 for {_e(summary.get('query_top1', '?'))}</p>",
        _whole_index(summary.get("whole_index")),
        _sdk_rerank((summary.get("whole_index") or {}).get("sdk")),
        _oracle(summary.get("oracle")),
        "<h2>Retrieval quality per variant</h2>",
        _metrics_table(summary.get("export_report", {})),
        "<h2>Training</h2>",
        f"<div class='charts'>{_curve(metrics)}</div>",
        "<h2>Held-out test photos and their top 5</h2>",
        f"<p class='sub' id='shown-photos'>{_e(summary.get('shown_photos', ''))}</p>",
        *(_query_card(q) for q in queries),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _whole_index(whole: dict[str, Any] | None) -> str:
    if not whole:
        return ""
    return (f"<p class='sub' id='whole-index'>All {_e(whole['photos'])} test photos searched against the bundle's "
            f"whole index ({_e(whole['candidates'])} recipes, as a user's query is; the table below ranks among the "
            f"test pairs only, as the Recipe1M protocol does): true recipe at rank 1 for "
            f"<b>{_e(whole['top1_percent'])}%</b>, in the top 5 for <b>{_e(whole['top5_percent'])}%</b></p>")


def _sdk_rerank(sdk: dict[str, Any] | None) -> str:
    """Top-1/top-5 through the SDK without and with re-ranking, the milliseconds it adds and its weight."""
    if not sdk or "reranked" not in sdk:
        note = (sdk or {}).get("note")
        return f"<p class='sub' id='sdk-rerank'>Re-ranking: none in this bundle ({_e(note)}).</p>" if note else ""
    g, r = sdk["global"], sdk["reranked"]
    cal = sdk.get("calibration") or {}
    chosen = (f"weight <b>{_e(sdk['weight'])}</b>, chosen on {_e(cal.get('queries'))} validation photos through "
              f"the bundle (top-1 {_e(cal.get('top1_before'))}% → {_e(cal.get('top1_after'))}%)" if cal
              else f"weight {_e(sdk['weight'])} (not calibrated)")
    state = ("on in this bundle" if sdk.get("enabled")
             else f"<b>off in this bundle</b>: {_e(sdk.get('note'))}; the numbers show what it would give")
    added = (f"; it adds <b>{_e(sdk['added_ms_p50'])} ms</b> per query (median wall time, 1 thread; "
             f"{_e(sdk.get('added_cpu_ms_p50'))} ms of CPU)" if sdk.get("added_ms_p50") is not None else "")
    return ("<table class='metrics' id='sdk-rerank'><tr><th>through the SDK, whole index</th><th>top-1 %</th>"
            "<th>top-5 %</th><th>ms / query</th></tr>"
            f"<tr data-mode='global'><td>global search</td><td>{_e(g['top1_percent'])}</td>"
            f"<td>{_e(g['top5_percent'])}</td><td>{_e(g.get('ms_p50') if g.get('ms_p50') is not None else '–')}"
            "</td></tr>"
            f"<tr data-mode='reranked'><td>re-ranked (rerank=True)</td><td>{_e(r['top1_percent'])}</td>"
            f"<td>{_e(r['top5_percent'])}</td><td>{_e(r.get('ms_p50') if r.get('ms_p50') is not None else '–')}"
            "</td></tr></table>"
            f"<p class='sub'>Re-ranking ({_e(sdk.get('variant'))} encoder, the matching head re-scores the top "
            f"{_e(cal.get('candidates', '?'))}): {state}; {chosen}{added}.</p>")
def _oracle(oracle: dict[str, Any] | None) -> str:
    if not oracle or oracle.get("fraction") is None:
        return ""
    return (f"<p class='sub' id='oracle'>Ceiling: ranking by the ingredients drawn on each photo alone (a perfect "
            f"ingredient recogniser) reaches R@1 <b>{_e(oracle['R@1'])}</b> on the same {_e(oracle['pairs'])} test "
            f"pairs; the model's R@1 {oracle['model_R@1']:.1f} is <b>{100 * oracle['fraction']:.0f}%</b> of it</p>")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _read_metrics(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest of the curve still draws
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _metrics_table(report: dict[str, Any]) -> str:
    variants = report.get("variants", {})
    rows = []
    for key, label in VARIANTS:
        if report.get("student") == "none":  # `--student none`: the exported encoders are the teacher's own
            label = label.replace("student ", "teacher ")
        q = (variants.get(key) or {}).get("retrieval")
        if not q:
            continue
        cells = "".join(f"<td>{q[m]:.1f}</td>" if isinstance(q.get(m), (int, float)) else "<td>–</td>"
                        for m in ("R@1", "R@5", "R@10", "medR"))
        rows.append(f"<tr data-variant='{_e(key)}'><td>{_e(label)}</td>{cells}</tr>")
    if not rows:
        return "<p>No export report (the export step did not run).</p>"
    pairs = report.get("eval_pairs", "?")
    return (f"<p class='sub'>image→recipe among {_e(pairs)} test pairs (chance R@1 ≈ "
            f"{100 / pairs if isinstance(pairs, int) and pairs else 0:.1f})</p>"
            "<table class='metrics' id='variants'><tr><th>variant</th><th>R@1</th><th>R@5</th><th>R@10</th>"
            "<th>medR</th></tr>" + "".join(rows) + "</table>")


def _data_uri(photo: Path) -> str:
    try:
        data = photo.read_bytes()
    except OSError:
        return ""
    mime = mimetypes.guess_type(photo.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _hit_list(hits: list[dict[str, Any]], true_id: Any, css: str) -> str:
    items = []
    for hit in hits:
        true = hit.get("recipe_id") == true_id
        ingredients = ", ".join(hit.get("ingredients", [])[:8])
        score = (f"<span class='score'>{float(hit['score']):+.3f}</span> "
                 if isinstance(hit.get("score"), (int, float)) else "")
        items.append(f"<li class='{'true' if true else ''}'>{score}{_e(hit.get('title', ''))}{' ✔' if true else ''}"
                     f"<br><span class='ingr'>{_e(ingredients)}</span></li>")
    return f"<ol class='{css}'>{''.join(items)}</ol>"


def _verdict(rank: Any) -> str:
    return (f"<span class='found'>true recipe at rank {rank}</span>" if rank
            else "<span class='missed'>true recipe not in the top 5</span>")


def _query_card(q: dict[str, Any]) -> str:
    rank = q.get("rank")
    uri = _data_uri(Path(q.get("photo", "")))
    img = f"<img alt='query photo' src='{uri}'>" if uri else "<div>(photo missing)</div>"
    before = f"<div><b>{_e(q.get('title', ''))}</b> · {_verdict(rank)}{_hit_list(q.get('hits', []), q.get('recipe_id'), 'global')}</div>"
    after = ""
    if "reranked_hits" in q:
        after = (f"<div><b>re-ranked</b> · {_verdict(q.get('reranked_rank'))}"
                 f"{_hit_list(q['reranked_hits'], q.get('recipe_id'), 'reranked')}</div>")
    return f"<div class='query' data-rank='{rank or 0}' data-reranked-rank='{q.get('reranked_rank') or 0}'>{img}{before}{after}</div>"


def _polyline(xs: list[float], ys: list[float], box: tuple[int, int, int, int], color: str) -> str:
    x0, y0, w, h = box
    if not xs:
        return ""
    lo_x, hi_x = min(xs), max(xs)
    lo_y, hi_y = min(ys), max(ys)
    sx = w / (hi_x - lo_x) if hi_x > lo_x else 0.0
    sy = h / (hi_y - lo_y) if hi_y > lo_y else 0.0
    pts = " ".join(f"{x0 + (x - lo_x) * sx:.1f},{y0 + h - (y - lo_y) * sy:.1f}" for x, y in zip(xs, ys, strict=True))
    dots = "".join(f"<circle cx='{x0 + (x - lo_x) * sx:.1f}' cy='{y0 + h - (y - lo_y) * sy:.1f}' r='2.5' "
                   f"fill='{color}'/>" for x, y in zip(xs, ys, strict=True)) if len(xs) <= 40 else ""
    return f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{pts}'/>{dots}"


def _chart(title: str, xs: list[float], ys: list[float], xlabel: str, color: str, chart_id: str) -> str:
    w, h, pad = 320, 170, 36
    box = (pad, 14, w - pad - 10, h - 14 - 30)
    axis = (f"<line x1='{pad}' y1='{box[1] + box[3]}' x2='{w - 10}' y2='{box[1] + box[3]}' stroke='#999'/>"
            f"<line x1='{pad}' y1='{box[1]}' x2='{pad}' y2='{box[1] + box[3]}' stroke='#999'/>")
    labels = ""
    if ys:
        labels = (f"<text x='{pad - 4}' y='{box[1] + 4}' font-size='10' text-anchor='end'>{max(ys):.3g}</text>"
                  f"<text x='{pad - 4}' y='{box[1] + box[3]}' font-size='10' text-anchor='end'>{min(ys):.3g}</text>"
                  f"<text x='{pad}' y='{h - 16}' font-size='10'>{min(xs):.3g}</text>"
                  f"<text x='{w - 10}' y='{h - 16}' font-size='10' text-anchor='end'>{max(xs):.3g}</text>")
    body = _polyline(xs, ys, box, color) if ys else \
        f"<text x='{w / 2}' y='{h / 2}' font-size='12' text-anchor='middle'>no data</text>"
    return (f"<svg id='{chart_id}' xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
            f"viewBox='0 0 {w} {h}' role='img' aria-label='{_e(title)}'>"
            f"<text x='{w / 2}' y='10' font-size='11' text-anchor='middle'>{_e(title)}</text>{axis}{labels}{body}"
            f"<text x='{(pad + w) / 2}' y='{h - 3}' font-size='10' text-anchor='middle'>{_e(xlabel)}</text></svg>")


def _curve(metrics: list[dict[str, Any]]) -> str:
    train = [r for r in metrics if r.get("type") == "train" and isinstance(r.get("loss"), (int, float))]
    val = [r for r in metrics if r.get("type") == "val" and isinstance(r.get("im2recipe"), dict)]
    loss = _chart("training loss", [float(r["step"]) for r in train], [float(r["loss"]) for r in train],
                  "step", "#1f6feb", "chart-loss")
    r1 = _chart("validation image→recipe R@1 (%)", [float(r["epoch"]) for r in val],
                [float(r["im2recipe"].get("R@1", 0.0)) for r in val], "epoch", "#1a7f37", "chart-val")
    return loss + r1
