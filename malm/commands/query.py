"""`malm query PHOTO... --bundle DIR`: the top recipes for food photos, on this machine.

    malm query dinner.jpg --bundle bundle/ -k 5
    MALM_BUNDLE=bundle/ malm query photos/ --json --exclude-ingredient peanut

No torch on this path (the SDK is numpy + ONNX Runtime + hnswlib), so it starts fast on a device.
Exit status: 0 all answered, 1 some photo could not be read (the others are still answered), 2 a user
error such as a missing or tampered bundle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from malm.commands._options import choice, split_list
from malm.console import console, styled
from malm.errors import MalmError
from malm.sdk.backends.registry import BACKEND_CHOICES, VARIANTS

Backend = choice(BACKEND_CHOICES)
Variant = choice(VARIANTS)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}


def expand_photos(photos: list[Path]) -> list[tuple[str, Path | None, str | None]]:
    """(name, path, error) in the order given; a folder expands to its images, sorted."""
    out: list[tuple[str, Path | None, str | None]] = []
    for p in photos:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                out.append((str(p), None, f"folder {p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            out.extend((str(f), f, None) for f in found)
        else:
            out.append((str(p), p, None))
    return out


def _table(photo: str, hits: list[Any]) -> Any:
    # on use only: keeps hnswlib, numpy out of the command line's start
    from rich.table import Table

    from malm.edge_index.records import ingredient_names

    table = Table(title=photo, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("title")
    table.add_column("main ingredients")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.title, ", ".join(ingredient_names(h.ingredients)[:5]))
    return table


def query_command(
    photos: list[Path] = typer.Argument(..., help="Photos and/or folders of photos"),
    bundle: Path = typer.Option(..., "--bundle", envvar="MALM_BUNDLE", help="Bundle directory (or $MALM_BUNDLE)"),
    k: int = typer.Option(10, "-k", "--k", help="Recipes per photo"),
    rerank: bool = typer.Option(False, "--rerank", help="Re-score the top candidates with token-level matching"),
    exclude: list[str] | None = typer.Option(None, "--exclude-ingredient",
                                             help="Leave out recipes with this ingredient (repeatable, or comma-separated)"),
    json_out: bool = typer.Option(False, "--json", help="JSON on stdout instead of tables"),
    backend: Backend = typer.Option("auto", "--backend", help="Encoder runtime"),
    variant: Variant = typer.Option("auto", "--variant", help="Image encoder variant"),
    threads: int | None = typer.Option(None, "--threads", help="Encoder threads (default: the runtime's)"),
    strict_selfcheck: bool = typer.Option(False, "--strict-selfcheck",
                                          help="Fail if the image encoder disagrees with the bundle's fp32 "
                                               "reference on this machine (instead of falling back)"),
    trusted_key: list[Path] | None = typer.Option(None, "--trusted-key",
                                                  help="Ed25519 public key (.pub) whose signature of the bundle "
                                                       "is accepted (repeatable); makes a signature required"),
    require_signature: bool | None = typer.Option(None, "--require-signature/--no-require-signature",
                                                  help="Refuse an unsigned bundle (default: when a key is "
                                                       "trusted, or $MALM_REQUIRE_SIGNATURE=1)"),
) -> None:
    """Find the recipes that match food photos, with the bundle's on-device encoder and index."""
    # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
    from malm.sdk import Retriever

    if k < 1:
        raise MalmError(f"-k must be >= 1, got {k}")
    retriever = Retriever.load(bundle, backend=backend, variant=variant, threads=threads,
                               strict_selfcheck=strict_selfcheck, trusted_keys=trusted_key,
                               require_signature=require_signature)
    rerank_note = retriever.rerank_note if rerank else None
    if rerank_note:
        # Asked for, but this bundle cannot or should not re-rank (e.g. its export measured no gain): say why
        # and answer with the global search rather than fail.
        console(stderr=True).print(f"--rerank: {rerank_note}; answering without re-ranking", markup=False,
                                   highlight=False, soft_wrap=True)
        rerank = False
    items = expand_photos(photos)
    readable = [(i, path) for i, (_, path, err) in enumerate(items) if err is None and path is not None]
    answers = retriever.search_batch([str(path) for _, path in readable], k=k, rerank=rerank,
                                     exclude_ingredients=split_list(exclude))
    by_item: dict[int, Any] = {i: ans for (i, _), ans in zip(readable, answers, strict=True)}
    results: list[dict[str, Any]] = []
    failed = False
    for i, (name, _, err) in enumerate(items):
        ans = by_item.get(i, MalmError(err or "not read"))
        if isinstance(ans, MalmError):
            failed = True
            results.append({"photo": name, "hits": [], "error": str(ans), "_hits": []})
        else:
            results.append({"photo": name, "hits": [h.to_dict() for h in ans], "error": None, "_hits": ans})
    if json_out:
        info = retriever.info()
        payload = {"results": [{k_: v for k_, v in r.items() if k_ != "_hits"} for r in results],
                   "encoder": {k_: info[k_] for k_ in ("backend", "variant", "encoder", "device", "selfcheck")},
                   "rerank": {"used": rerank, "weight": info["rerank_weight"] if rerank else None,
                              "note": rerank_note}}
        typer.echo(json.dumps(payload, ensure_ascii=False))
    else:
        # Titles, ingredients and photo paths are data (an app user may title a recipe "[/]"): never markup.
        out, err_console = console(), console(stderr=True)
        for r in results:
            if r["error"]:
                err_console.print(styled("error", "red"), ": ", r["error"], sep="")
            else:
                out.print(_table(r["photo"], r["_hits"]))
    if failed:
        # SystemExit, not typer.Exit: `malm.cli.main` runs click with standalone_mode=False, where an Exit's
        # code is returned (and dropped) instead of becoming the process status.
        sys.exit(1)


def register(app: typer.Typer) -> None:
    app.command("query")(query_command)
