"""`malm bundle info | card`: what a bundle holds (ultralytics-style table) and its model card.

    malm bundle info bundle/                 # variants (size, quality, latency) and the index
    malm bundle info bundle/ --json
    malm bundle card bundle/ --data DATA     # regenerate README.md (+ examples.png from DATA's test photos)

No torch: reads the manifest and report.json (and, for `card --data`, queries through the SDK).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

bundle_app = typer.Typer(help="Inspect a bundle: its variants, index and model card.", no_args_is_help=True,
                         pretty_exceptions_show_locals=False)


def _cell(v: Any, spec: str) -> str:
    return spec.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


@bundle_app.command("info")
def info_command(
    bundle: Path = typer.Argument(..., help="Bundle directory"),
    verify: bool = typer.Option(False, "--verify", help="Also check every file's sha256 against the manifest"),
    json_out: bool = typer.Option(False, "--json", help="Print the variants and index as JSON on stdout"),
) -> None:
    """The bundle's image-encoder variants (size, held-out R@1/R@5/medR, latency) and its recipe index."""
    from malm.bundle import read_manifest
    from malm.model_card import _report, index_summary, variant_rows

    manifest = read_manifest(bundle)
    if verify:
        from malm.bundle import verify as verify_files

        verify_files(bundle, manifest)
    report = _report(bundle)
    files = manifest.get("files") or {}
    info: dict[str, Any] = {"bundle": str(bundle), "malm_version": manifest.get("malm_version"),
            "format_version": manifest.get("format_version"), "model": (manifest.get("model") or {}).get("name"),
            "embedding": manifest.get("embedding"), "preprocess": manifest.get("preprocess"),
            "eval_pairs": report.get("eval_pairs"), "variants": variant_rows(manifest, report),
            "index": index_summary(manifest), "files": len(files),
            "bytes": sum(int(f.get("bytes", 0)) for f in files.values()), "verified": verify or None}
    info["recipe_encoders"] = _recipe_encoders(manifest)
    if json_out:
        typer.echo(json.dumps(info, indent=1, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"{escape(str(bundle))}: model {info['model'] or '?'}, malm {info['malm_version']}, "
                  f"{info['files']} files, {info['bytes'] / 1e6:.2f} MB" + (", hashes verified" if verify else ""),
                  highlight=False)
    table = Table(title=f"image encoders (image→recipe on {info['eval_pairs'] or '?'} held-out pairs)",
                  title_justify="left")
    for col in ("variant", "file", "size MB", "R@1", "R@5", "medR", "cos", "ms 1t"):
        table.add_column(col, justify="left" if col in ("variant", "file") else "right")
    for r in info["variants"]:
        table.add_row(r["variant"], escape(r["file"]) if r["shipped"] else "(not shipped)",
                      _cell(r["size_mb"], "{:.2f}"), _cell(r["R@1"], "{:.1f}"), _cell(r["R@5"], "{:.1f}"),
                      _cell(r["medR"], "{:.1f}"), _cell(r["cosine_to_teacher"], "{:.4f}"),
                      _cell(r["latency_ms_1t"], "{:.2f}"))
    console.print(table)
    idx = info["index"]
    if idx["recipes"] is None:
        console.print("index: none yet (malm index build)")
    else:
        console.print(f"index: {idx['recipes']} recipes, dim {idx['dim']}, space {idx['space']}, M {idx['M']}, "
                      f"ef_construction {idx['ef_construction']}, ef_search {idx['ef_search']}, "
                      f"rerank {idx['rerank'] or 'none'}", highlight=False)
    if info["recipe_encoders"]:
        console.print("recipe encoders: " + ", ".join(
            f"{r['name']} {r['kind']} {r['precision']} {_cell(r['size_mb'], '{:.2f}')} MB"
            + (f" (gate cosine {r['gate_cosine']:.4f})" if r["gate_cosine"] is not None else "")
            for r in info["recipe_encoders"]), markup=False, highlight=False)


def _recipe_encoders(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe encoder's variants (fp32, int8, TensorRT-ready, CoreML) with their size and int8 gate."""
    files = manifest.get("files") or {}
    out = []
    for name, e in (manifest.get("encoders") or {}).items():
        if isinstance(e, dict) and e.get("role") == "recipe":
            size = (files.get(e.get("file")) or {}).get("bytes")
            gate: dict[str, Any] = e["gate"] if isinstance(e.get("gate"), dict) else {}
            out.append({"name": name, "file": e.get("file"), "kind": e.get("kind"), "precision": e.get("precision"),
                        "size_mb": round(size / 1e6, 3) if isinstance(size, int) else None,
                        "gate_cosine": gate.get("cosine_mean_exact")})
    return out


@bundle_app.command("card")
def card_command(
    bundle: Path = typer.Argument(..., help="Bundle directory"),
    data: Path | None = typer.Option(None, "--data", help="Recipe1M-layout folder: also draw examples.png "
                                                         "from its held-out photos"),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths as JSON on stdout"),
) -> None:
    """(Re)write the bundle's model card, README.md (it is also rewritten on every export and index change)."""
    from malm.bundle import read_manifest
    from malm.model_card import write_examples, write_model_card

    manifest = read_manifest(bundle)
    examples = write_examples(bundle, data) if data is not None else None
    card = write_model_card(bundle, manifest)
    if json_out:
        typer.echo(json.dumps({"card": str(card), "examples": str(examples) if examples else None}))
    else:
        typer.echo(f"wrote {card}" + (f" and {examples}" if examples else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")
