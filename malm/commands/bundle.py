"""`malm bundle info | card | web`: what a bundle holds (ultralytics-style table), its model card, its web export.

    malm bundle info bundle/                 # variants (size, quality, latency) and the index
    malm bundle info bundle/ --json
    malm bundle card bundle/ --data DATA     # regenerate README.md (+ examples.png from DATA's test photos)
    malm bundle web bundle/ --out site/bundle   # the files the browser client (clients/web) fetches
    malm bundle keygen --out release         # release.key + release.pub (Ed25519)
    malm bundle sign bundle/ --key release.key   # manifest.sig; devices load with --trusted-key release.pub

No torch: reads the manifest and report.json (and, for `card --data`, queries through the SDK).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from malm.bundle import read_manifest
from malm.bundle import verify as verify_files
from malm.console import console as data_console
from malm.model_card import _report, index_summary, variant_rows, write_model_card

bundle_app = typer.Typer(help="Inspect and sign a bundle: its variants, index, model card and signature.",
                         no_args_is_help=True,
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
    manifest = read_manifest(bundle)
    if verify:
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
    from rich.table import Table

    # Manifest strings (model name, file names, versions) are whatever the bundle's maker wrote: plain text.
    console = data_console()
    console.print(f"{bundle}: model {info['model'] or '?'}, malm {info['malm_version']}, "
                  f"{info['files']} files, {info['bytes'] / 1e6:.2f} MB" + (", hashes verified" if verify else ""))
    table = Table(title=f"image encoders (image→recipe on {info['eval_pairs'] or '?'} held-out pairs)",
                  title_justify="left")
    for col in ("variant", "file", "size MB", "R@1", "R@5", "medR", "cos", "ms 1t"):
        table.add_column(col, justify="left" if col in ("variant", "file") else "right")
    for r in info["variants"]:
        table.add_row(str(r["variant"]), str(r["file"]) if r["shipped"] else "(not shipped)",
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
                      f"rerank {idx['rerank'] or 'none'}")
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
    # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
    from malm.sdk.examples import write_examples

    manifest = read_manifest(bundle)
    examples = write_examples(bundle, data) if data is not None else None
    card = write_model_card(bundle, manifest)
    if json_out:
        typer.echo(json.dumps({"card": str(card), "examples": str(examples) if examples else None}))
    else:
        typer.echo(f"wrote {card}" + (f" and {examples}" if examples else ""))


@bundle_app.command("web")
def web_command(
    bundle: Path = typer.Argument(..., help="Bundle directory"),
    out: Path = typer.Option(..., "--out", help="Directory to write the web bundle into (new or empty)"),
    variant: list[str] = typer.Option([], "--variant", help="Image encoder variant(s) to ship (int8, int8_cpu, "
                                                           "fp32); default: the first of int8, int8_cpu, fp32"),
    vectors: str = typer.Option("float16", "--vectors", help="Recipe vectors as float16 or int8 (+ scales)"),
    rerank: bool = typer.Option(True, "--rerank/--no-rerank", help="Ship the re-ranking data when the bundle has it"),
    recipe_encoder: bool = typer.Option(True, "--recipe-encoder/--no-recipe-encoder",
                                        help="Ship the recipe encoder + vocabulary (add recipes on the phone)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing web bundle at --out"),
    json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON on stdout"),
) -> None:
    """Write what a browser fetches (clients/web): the image encoder, recipe vectors and records, re-ranking
    data, each file hashed in the web bundle's manifest.json."""
    # on use only: keeps numpy, Pillow and hnswlib out of the command line's start
    from malm.web_bundle import export_web

    result = export_web(bundle, out, variant, vectors, rerank, overwrite, recipe_encoder)
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(f"wrote {out}: {result.recipes} recipes, image encoder {', '.join(result.variants)}, "
                   f"{result.vectors} vectors{', re-ranking' if result.rerank else ''}, "
                   f"{result.bytes / 1e6:.2f} MB")
@bundle_app.command("keygen")
def keygen_command(
    out: Path = typer.Option(Path("malm-signing"), "--out", help="Writes OUT.key (private, 0600) and OUT.pub"),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths and the key id as JSON"),
) -> None:
    """A new Ed25519 key pair for `malm bundle sign` (keep the .key off devices; ship the .pub)."""
    # on use only: cryptography loads only for the commands that sign
    from malm.signing import key_id, keygen, load_public_key

    priv, pub = keygen(out)
    kid = key_id(load_public_key(pub))
    if json_out:
        typer.echo(json.dumps({"private_key": str(priv), "public_key": str(pub), "key_id": kid}))
    else:
        typer.echo(f"wrote {priv} (private: keep it secret) and {pub} (key id {kid[:16]})")


@bundle_app.command("sign")
def sign_command(
    bundle: Path = typer.Argument(..., help="Bundle directory"),
    key: Path = typer.Option(..., "--key", help="Private key from `malm bundle keygen` (OUT.key)"),
    json_out: bool = typer.Option(False, "--json", help="Print the signature file and the key id as JSON"),
) -> None:
    """Hash every file, then sign the manifest (which holds every file's sha256): writes manifest.sig."""
    # on use only: cryptography loads only for the commands that sign
    from malm.signing import sign_bundle

    sig, kid = sign_bundle(bundle, key)
    if json_out:
        typer.echo(json.dumps({"signature": str(sig), "key_id": kid}))
    else:
        typer.echo(f"signed {bundle} with key {kid[:16]}: {sig}")


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")
