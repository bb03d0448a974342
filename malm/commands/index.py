"""`malm index build | add | remove`: the bundle's recipe index (hnswlib) and recipe store (SQLite).

    malm index build --checkpoint runs/malm --recipes data/ --bundle bundle/ --split test
    malm index add --bundle bundle/ --recipes new.jsonl            # ONNX recipe encoder in the bundle, no torch
    malm index remove --bundle bundle/ --ids 000018c8a5 00003a70b1

The torch recipe encoder (malm.training.embed) is imported only when --checkpoint is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import typer

from malm.bundle import load_manifest, require_same_checkpoint, sha256_path
from malm.commands._options import choice, split_list
from malm.errors import MalmError
from malm.model_card import write_model_card
from malm.progress import progress
from malm.recipe1m import SPLITS as RECIPE1M_SPLITS
from malm.recipe1m import load_recipe1m

index_app = typer.Typer(help="Build and update a bundle's recipe index.", no_args_is_help=True,
                        pretty_exceptions_show_locals=False)

SPLITS = ("all", *RECIPE1M_SPLITS)
Split = choice(SPLITS)
Tag = Literal["best", "last"]


def _read_recipes(source: Path, split: str, strict: bool) -> tuple[list[Any], Any]:
    """Records from a Recipe1M folder or a JSONL file, with per-reason skip counts."""
    # on use only: keeps hnswlib, numpy out of the command line's start
    from malm.edge_index.records import ReadReport, dedupe, iter_jsonl

    report = ReadReport()
    if split not in SPLITS:
        raise MalmError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if source.is_dir():
        data = load_recipe1m(source, strict=strict)
        for reason, n in data.stats.skipped.items():
            report.skipped[reason] += n
        # The reader's records are the index's record type: no conversion.
        records = [r for r in data.recipes if split == "all" or r.partition == split]
        report.read = len(records)
    elif source.is_file():
        records = list(iter_jsonl(source, report, strict=strict, split=split))
    else:
        raise MalmError(f"recipes {source}: no such file or folder")
    return list(dedupe(records, report, strict=strict)), report


def _check_checkpoint(bundle: Path, run: Path, tag: str) -> str:
    """sha256 of the run's weights, refused when the bundle's encoders came from other weights."""
    weights = run / f"{tag}.safetensors"
    if not weights.is_file():
        raise MalmError(f"checkpoint {run}: no {tag}.safetensors (is this a training run directory?)")
    digest, _ = sha256_path(weights)
    require_same_checkpoint(bundle, digest, str(weights), "index with the checkpoint you exported")
    return digest


def _echo_report(report: Any, bundle: Path, verb: str, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=1))
        return
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(report.read.skipped.items()))
    typer.echo(f"{verb} {report.indexed or report.removed} recipes; the index of {bundle} now holds {report.count}"
               + (f" (skipped: {skipped})" if skipped else "")
               + (f" (not found: {', '.join(report.not_found)})" if report.not_found else ""))


@index_app.command("build")
def build_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Training run directory (its recipe encoder)"),
    recipes: Path = typer.Option(..., "--recipes", help="Recipe1M-layout folder or a JSONL file (one recipe a line)"),
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory to write the index into"),
    m: int = typer.Option(32, "--M", help="hnswlib graph degree"),
    ef_construction: int = typer.Option(200, "--ef-construction", help="hnswlib build beam width"),
    ef_search: int = typer.Option(128, "--ef-search", help="hnswlib query beam width (stored in the manifest)"),
    batch_size: int = typer.Option(256, "--batch-size", help="Recipes encoded per batch"),
    split: Split = typer.Option("all", "--split", help="Which partition to index"),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record instead of skipping it"),
    tag: Tag = typer.Option("best", "--tag", help="Checkpoint tag"),
    rerank_tokens: bool = typer.Option(False, "--rerank-tokens",
                                       help="Also store recipe token features for --rerank (fp16, grows the bundle)"),
    matching_head: Path | None = typer.Option(None, "--matching-head",
                                              help="Matching-head ONNX to re-rank with (else late interaction)"),
    examples: bool = typer.Option(True, "--examples/--no-examples",
                                  help="With a Recipe1M-layout folder: draw the model card's examples.png from its "
                                       "held-out photos (re-reads the folder)"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout"),
) -> None:
    """Encode recipes with the trained recipe encoder and (re)build the bundle's index and store."""
    # on use only: keeps Pillow, hnswlib, numpy, torch out of the command line's start
    from malm.edge_index.builder import build_index, shipped_matching_head, use_matching_head
    from malm.edge_index.hnsw import IndexSettings
    from malm.training.embed import torch_recipe_encoder

    try:  # validate the settings before the slow encoding
        IndexSettings(dim=1, M=m, ef_construction=ef_construction, ef_search=ef_search)
    except ValueError as e:
        raise MalmError(str(e)) from None
    if matching_head is not None and not matching_head.is_file():
        raise MalmError(f"--matching-head {matching_head}: file not found")
    digest = _check_checkpoint(bundle, checkpoint, tag)
    shipped = shipped_matching_head(bundle) if matching_head is None else None
    if shipped:
        # `malm export --tokens` put the trained matching head in the bundle: store what it needs.
        typer.echo(f"bundle has a matching head ({shipped}): storing recipe token features for --rerank", err=True)
    records, read = _read_recipes(recipes, split, strict)
    encode = torch_recipe_encoder(checkpoint, tag, tokens=rerank_tokens or matching_head is not None or bool(shipped))
    extra = {"checkpoint": {"run": str(checkpoint), "tag": tag, "sha256": digest}, "recipes": str(recipes),
             "split": split}
    with progress("encoding recipes", total=len(records)) as advance:
        report = build_index(bundle, records, encode, M=m, ef_construction=ef_construction, ef_search=ef_search,
                             batch_size=batch_size, progress=advance, report=read, extra=extra)
    use_matching_head(bundle, given=matching_head, shipped=shipped)
    _calibrate(bundle, recipes)
    if examples and recipes.is_dir():
        _examples(bundle, recipes, split)
    _echo_report(report, bundle, "indexed", json_out)


def _calibrate(bundle: Path, recipes: Path) -> None:
    """A new index changes what re-ranking re-scores: choose its weight again on the data's validation photos
    through the bundle (or keep the exported choice, saying so, when there are none)."""
    manifest = load_manifest(bundle)
    if manifest.rerank is None:
        return
    if not recipes.is_dir() or not any(e.role == "image" for e in manifest.encoders.values()):
        typer.echo("re-ranking: not re-calibrated (needs a Recipe1M folder with validation photos and an exported "
                   "image encoder); the bundle keeps its weight " + str(manifest.rerank.weight), err=True)
        return
    # on use only: keeps numpy, Pillow, onnxruntime and hnswlib out of the command line's start
    from malm.export import rerank_calibration as rc

    queries = rc.validation_queries(recipes)
    if not queries:
        typer.echo(f"re-ranking: not re-calibrated ({recipes} has no validation photos); the bundle keeps its "
                   f"weight {manifest.rerank.weight}", err=True)
        return
    result = rc.calibrate(bundle, queries, log=lambda m: typer.echo(m, err=True))
    rc.record(bundle, result)


def _examples(bundle: Path, data: Path, split: str) -> None:
    """examples.png for the model card, from the data's held-out photos (when the bundle can search)."""
    # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
    from malm.sdk.examples import write_examples

    # Photos of the indexed split, so that their true recipes are in the index ("all": the test split).
    if write_examples(bundle, data, split="test" if split == "all" else split) is not None:
        write_model_card(bundle)


@index_app.command("add")
def add_command(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory with an index"),
    recipes: Path = typer.Option(..., "--recipes", help="JSONL file, one recipe a line"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint",
                                           help="Encode with this run's torch model (default: the bundle's ONNX)"),
    tag: Tag = typer.Option("best", "--tag", help="Checkpoint tag"),
    batch_size: int = typer.Option(256, "--batch-size", help="Recipes encoded per batch"),
    replace: bool = typer.Option(False, "--replace", help="Re-index recipes whose id is already in the index"),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad record instead of skipping it"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout"),
) -> None:
    """Add recipes to the index, atomically (a crash leaves the previous bundle intact)."""
    # on use only: keeps hnswlib, numpy out of the command line's start
    from malm.edge_index.builder import add_recipes

    manifest = load_manifest(bundle)
    if not recipes.is_file():
        raise MalmError(f"recipes {recipes}: file not found (index add reads a JSONL file)")
    records, read = _read_recipes(recipes, "all", strict)
    if checkpoint is not None:
        # on use only: keeps Pillow, hnswlib, numpy, torch out of the command line's start
        from malm.training.embed import torch_recipe_encoder

        _check_checkpoint(bundle, checkpoint, tag)
        encode = torch_recipe_encoder(checkpoint, tag, tokens=manifest.rerank is not None)
    else:
        # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
        from malm.sdk.bundle_loader import open_bundle
        from malm.sdk.recipe_encoder import OnnxRecipeEncoder

        encode = OnnxRecipeEncoder(open_bundle(bundle))
    with progress("encoding recipes", total=len(records)) as advance:
        report = add_recipes(bundle, records, encode, batch_size=batch_size, progress=advance, report=read,
                             replace_existing=replace)
    _echo_report(report, bundle, "added", json_out)


# `--ids A B C` (the README's spelling) leaves B and C as extra arguments: accepted here without a stray
# positional in the usage line.
@index_app.command("remove", context_settings={"allow_extra_args": True})
def remove_command(
    ctx: typer.Context,
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory with an index"),
    ids: list[str] = typer.Option(..., "--ids", help="Recipe ids to remove: --ids A --ids B, --ids A,B or --ids A B"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout"),
) -> None:
    """Remove recipes by id, atomically; their index slots are reused by later adds."""
    # on use only: keeps hnswlib, numpy out of the command line's start
    from malm.edge_index.builder import remove_recipes

    stray = [a for a in ctx.args if a.startswith("-")]
    if stray:
        raise MalmError(f"index remove: unknown option(s) {' '.join(stray)}")
    report = remove_recipes(bundle, split_list([*ids, *ctx.args]))
    _echo_report(report, bundle, "removed", json_out)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
