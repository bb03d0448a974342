"""The model card of a bundle: `README.md` beside `manifest.json`, and the tables `malm bundle info` prints.

Written by each bundle writer after its commit (`refresh_model_card`: the exporter, the index build/add/
remove/re-rank writers), so it always describes the manifest it sits beside; everything in it comes from the manifest and the export's
`report.json`, nothing is typed by hand. The card is documentation, not a runtime input: it is not listed
in the manifest's hashed files (the SDK never reads it), and `write_model_card` can regenerate it at any
time. A retrieval-examples grid (`examples.png`) is drawn through the SDK by `malm.sdk.examples.write_examples`
when the data is at hand (`malm index build` with a Recipe1M-layout folder).

Light: stdlib and the bundle schema; it never imports the SDK (the bundle writer stays below the SDK).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from malm._atomic import write_text_atomic
from malm.bundle import read_manifest

CARD = "README.md"
EXAMPLES = "examples.png"
LICENSE = "Apache-2.0"

# What is known about the data a bundle was built from, in the words the card uses.
CAVEAT = ("The procedural food benchmark (`malm data synth`) is a synthetic stand-in with the Recipe1M layout: "
          "drawn dishes, generated recipes. It is **not Recipe1M**; scores on it show that the pipeline works "
          "end to end and how variants compare, not how well the model recognises real food photos.")


def _report(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fmt(v: Any, spec: str = "{:.1f}") -> str:
    return spec.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _md(s: str) -> str:
    """Text from a manifest as inert Markdown: no new block, link, image, HTML tag, code-span or table break."""
    for a, b in (("\r", " "), ("\n", " "), ("`", "'"), ("|", "\\|"), ("[", "\\["), ("]", "\\]"), ("<", "&lt;"),
                 (">", "&gt;")):
        s = s.replace(a, b)
    return s


def _md_tree(v: Any) -> Any:
    if isinstance(v, str):
        return _md(v)
    if isinstance(v, dict):
        return {_md(str(k)): _md_tree(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_md_tree(x) for x in v]
    return v


def variant_rows(manifest: dict[str, Any], report: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per image-encoder variant: name, file, kind, precision, size, quality, latency.

    Quality comes from the manifest's `quality` section (the export's held-out measurement), falling back
    to `report.json`; variants measured but not shipped (the torch teacher/student) are rows too, marked.
    """
    quality = dict((report or {}).get("variants") or {})
    quality.update(manifest.get("quality") or {})
    encoders = {k: v for k, v in (manifest.get("encoders") or {}).items()
                if isinstance(v, dict) and v.get("role", "image") == "image"}
    files = manifest.get("files") or {}
    rows = []
    # Reference rows first (teacher, then student, in torch), then what ships, by name (fp32, int8, …).
    names = sorted(set(quality) | set(encoders),
                   key=lambda n: (0 if n.startswith("teacher") else 1 if n.startswith("student") else 2, n))
    for name in names:
        if name.startswith("recipe"):
            continue
        q, enc = quality.get(name) or {}, encoders.get(name) or {}
        retrieval = q.get("retrieval") or {}
        rel = enc.get("file") or q.get("file") or ""
        size_mb = q.get("size_mb")
        if size_mb is None and rel in files:
            size_mb = round(files[rel].get("bytes", 0) / 1e6, 3)
        rows.append({"variant": name, "file": rel, "shipped": bool(enc), "kind": enc.get("kind", "torch"),
                     "precision": enc.get("precision") or ("fp32" if "fp32" in name else ""),
                     "size_mb": size_mb, "R@1": retrieval.get("R@1"), "R@5": retrieval.get("R@5"),
                     "R@10": retrieval.get("R@10"), "medR": retrieval.get("medR"),
                     "cosine_to_teacher": q.get("cosine_to_teacher"),
                     "latency_ms_1t": q.get("latency_ms_1t"), "latency_ms_2t": q.get("latency_ms_2t")})
    return rows


def index_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The recipe index as a user asks about it: how many recipes, the hnswlib settings, the re-ranker."""
    index = manifest.get("index") or {}
    rerank = manifest.get("rerank") or {}
    return {"recipes": index.get("count"), "dim": index.get("dim"), "space": index.get("space"),
            "M": index.get("M"), "ef_construction": index.get("ef_construction"),
            "ef_search": index.get("ef_search"), "source": index.get("recipes"), "split": index.get("split"),
            "rerank": rerank.get("kind") if rerank else None,
            "rerank_candidates": rerank.get("candidates") if rerank else None,
            "rerank_weight": rerank.get("weight") if rerank else None,
            "rerank_enabled": rerank.get("enabled", True) if rerank else None,
            "rerank_disabled_reason": rerank.get("disabled_reason") if rerank else None}


def _data_source(manifest: dict[str, Any], report: dict[str, Any]) -> tuple[str, bool]:
    """(a sentence about the data, whether it is the procedural benchmark)."""
    index = manifest.get("index") or {}
    for where in (index.get("recipes"), report.get("data")):
        if not where:
            continue
        synth = Path(str(where)) / "synth.json"
        if synth.is_file():
            try:
                meta = json.loads(synth.read_text())
            except (OSError, ValueError):
                meta = {}
            bits = _md(", ".join(f"{k} {meta[k]}" for k in ("recipes", "seed", "image_size") if k in meta))
            return f"the procedural food benchmark ({bits})" if bits else "the procedural food benchmark", True
        return f"Recipe1M-layout data at `{_md(str(where))}`", False
    return "not recorded in this bundle", False


def render_card(manifest: dict[str, Any], report: dict[str, Any] | None = None, examples: bool = False) -> str:
    """The card's Markdown (pure: from the manifest and report only)."""
    report = report or {}
    data, procedural = _data_source(manifest, report)
    manifest, report = _md_tree(manifest), _md_tree(report)  # manifest text is untrusted: inert in Markdown
    model = manifest.get("model") or {}
    student = manifest.get("student") or {}
    emb = manifest.get("embedding") or {}
    name = model.get("name") or "malm model"
    arch = student.get("arch")
    lines = [
        f"# {name} — malm image-to-recipe bundle",
        "",
        "_Generated by malm from `manifest.json` and `report.json`; regenerated on every change to the bundle._",
        "",
        "## What it is",
        "A food photo goes in; the recipes it most likely shows come out. The image encoder "
        + (f"(a `{arch}` student distilled from the `{name}` teacher) " if arch else f"(`{name}`) ")
        + f"maps a photo to a {emb.get('dim', '?')}-d {emb.get('metric', 'cosine')} embedding; an hnswlib index "
        "of recipe embeddings (made by the trained recipe encoder) returns the nearest recipes. Runs with "
        "`malm.sdk` (numpy + ONNX Runtime + hnswlib, no torch).",
        "",
        f"- malm {manifest.get('malm_version', '?')}, bundle format {manifest.get('format_version', '?')}, "
        f"checkpoint sha256 `{str(model.get('checkpoint_sha256', '?'))[:12]}…`",
        f"- Licence: malm's code is {LICENSE}. Weights inherit the terms of the data they were trained on: "
        "Recipe1M is for non-commercial research only; the procedural benchmark brings no third-party data.",
        "",
        "## Training and evaluation data",
        f"Trained, exported and indexed on {data}.",
        "",
        ("> " + CAVEAT) if procedural else
        ("> Scores below are measured on the held-out split of the data named above. " + CAVEAT),
        "",
        "## Variants",
    ]
    lines += _variant_lines(manifest, report) + _index_lines(manifest) + _use_lines(manifest)
    if examples:
        lines += ["", "## Retrieval examples",
                  "Held-out photos (left) and the top recipes the bundle returns; a green frame marks the true "
                  "recipe.", "", f"![retrieval examples]({EXAMPLES})"]
    return "\n".join(lines) + "\n"


def _variant_lines(manifest: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """The variants table: held-out retrieval, cosine to the teacher and latency of each image encoder."""
    lines: list[str] = []
    rows = variant_rows(manifest, report)
    if rows:
        pairs = report.get("eval_pairs")
        lines += [f"Image→recipe retrieval (percent) over the {pairs or '?'} held-out test pairs as one set, "
                  "cosine of each variant's embedding to the teacher's, and the latency of the encoder alone "
                  "(batch 1, one thread) on the machine that exported it.", "",
                  "| variant | file | size MB | R@1 | R@5 | R@10 | medR | cos to teacher | ms (1 thread) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            where = f"`{r['file']}`" if r["shipped"] else "(not shipped)"
            lines.append(f"| {r['variant']} | {where} | {_fmt(r['size_mb'], '{:.2f}')} | {_fmt(r['R@1'])} | "
                         f"{_fmt(r['R@5'])} | {_fmt(r['R@10'])} | {_fmt(r['medR'])} | "
                         f"{_fmt(r['cosine_to_teacher'], '{:.4f}')} | {_fmt(r['latency_ms_1t'], '{:.2f}')} |")
    else:
        lines.append("No image encoder exported into this bundle yet (`malm export`).")
    notes = report.get("notes") or []
    if notes:
        lines.append("")
    for note in notes:
        lines.append(f"- note: {note}")
    return lines


def _index_lines(manifest: dict[str, Any]) -> list[str]:
    idx = index_summary(manifest)
    if idx["recipes"] is not None:
        rerank = f" over the top {idx['rerank_candidates']}" if idx["rerank_candidates"] else ""
        if idx["rerank"] and idx["rerank_enabled"]:
            rerank += f", weight {idx['rerank_weight']}"
        elif idx["rerank"] and idx["rerank_enabled"] is False:
            rerank += f", switched off ({idx['rerank_disabled_reason']})"
        return ["", "## Recipe index",
                f"{idx['recipes']} recipes, {idx['dim']}-d, hnswlib space `{idx['space']}`, M {idx['M']}, "
                f"ef_construction {idx['ef_construction']}, ef_search {idx['ef_search']}; re-ranking: "
                f"{idx['rerank'] or 'none'}{rerank}."]
    return ["", "## Recipe index", "No index yet (`malm index build`)."]


def _use_lines(manifest: dict[str, Any]) -> list[str]:
    """Preprocessing, how to use the bundle, and its intended use and limits."""
    pp = manifest.get("preprocess") or {}
    return ["", "## Preprocessing",
            "Done by the SDK in numpy from the manifest (nothing to reimplement): "
            f"resize the short side to {pp.get('resize', '?')} ({pp.get('interpolation', '?')}), "
            f"{pp.get('crop', '?')} crop {pp.get('size', '?')}×{pp.get('size', '?')}, RGB, scale to [0, 1], "
            f"normalise with mean {pp.get('mean', '?')} and std {pp.get('std', '?')}; EXIF orientation applied; "
            f"images over {pp.get('max_pixels', '?')} pixels refused.",
            "", "## Use", "```python",
            "from malm.sdk import Retriever", "",
            "retriever = Retriever.load(\"path/to/this/bundle\")",
            "for hit in retriever.search(\"dinner.jpg\", k=5, exclude_ingredients=[\"peanut\"]):",
            "    print(hit.rank, hit.score, hit.title)", "```",
            "or `malm query dinner.jpg --bundle path/to/this/bundle`.",
            "", "## Intended use and limits",
            "- Intended: suggesting recipes for a food photo in an app, on a phone, a laptop or an edge box; "
            "searching a recipe collection you own by photo.",
            "- Not for: dietary, allergy or medical decisions. The allergen filter matches ingredient *names* in "
            "the recipe text; it cannot see what is in the photographed dish. Always check the recipe.",
            "- The model only knows the recipes in the index and the kinds of photos it was trained on; "
            "photos far from them (other cuisines, non-food) still return the nearest recipes, with no "
            "\"not food\" answer. Scores are cosine similarities, comparable within one query, not probabilities.",
            "- int8 variants trade a little agreement with the teacher (the cosine column) for size and speed, "
            "and int8 kernels differ across CPUs" + _selfcheck_sentence(manifest)]


def _selfcheck_sentence(manifest: dict[str, Any]) -> str:
    check = manifest.get("selfcheck")
    if not isinstance(check, dict):
        return (": check a variant on the device it will run on (`Retriever.load(bundle, variant=\"fp32\")` "
                "picks one explicitly).")
    where = f" (exported on {check['exported_on']})" if check.get("exported_on") else ""
    return (f". This bundle carries a self-check{where}: {check.get('count', '?')} reference inputs with their fp32 "
            "embeddings, which the SDK runs once where the bundle lands; an int8 encoder whose mean cosine to them "
            f"is below {check.get('min_cosine', '?')} on that CPU is not used: with `variant=\"auto\"` the SDK takes the "
            "next one (int8_cpu → int8 → fp32) and says so in one warning line.")


def write_model_card(root: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> Path:
    """(Re)write `README.md` in the bundle `root` from its manifest (read if not given) and report."""
    root = Path(root)
    if manifest is None:
        manifest = read_manifest(root)
    text = render_card(manifest, _report(root), examples=(root / EXAMPLES).is_file())
    path = root / CARD
    write_text_atomic(path, text)
    os.chmod(path, 0o644)  # a shipped document: readable by whoever serves the bundle
    return path


def refresh_model_card(root: str | os.PathLike[str]) -> None:
    """Rewrite the card after a bundle write. It is documentation, not a runtime input: a failure to write it
    is a warning, never a failed (already committed) bundle write."""
    try:
        write_model_card(root)
    except Exception as e:  # noqa: BLE001 - any failure only costs the card
        warnings.warn(f"bundle {root}: model card not written ({type(e).__name__}: {e})", stacklevel=2)
