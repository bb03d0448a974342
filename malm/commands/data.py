"""`malm data` commands: `prepare` (the training cache of a Recipe1M folder) and `synth` (the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from malm.progress import progress

data_app = typer.Typer(
    help="Recipe1M-layout data: prepare the training cache, generate the procedural food benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@data_app.command("prepare")
def prepare_command(
    data_dir: Path = typer.Argument(..., help="Recipe1M folder: layer1.json, layer2.json, [det_ingrs.json], images/"),
    images: Path | None = typer.Option(None, "--images", help="Images root (default DATA_DIR/images, else DATA_DIR)"),
    cache: Path | None = typer.Option(None, "--cache", help="Cache folder (default DATA_DIR/.malm_cache)"),
    min_freq: int = typer.Option(10, "--min-freq", help="Keep words seen at least this often in train"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the cache is up to date (e.g. images changed)"),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first malformed record instead of skipping it"),
    json_out: bool = typer.Option(False, "--json", help="Print the cache manifest as JSON on stdout"),
) -> None:
    """Parse a Recipe1M folder once into a memory-mapped cache for training (reused while unchanged)."""
    # on use only: keeps numpy out of the command line's start
    from malm.training.data.prepare import prepare

    # The reader streams layer1.json without knowing its length: an indeterminate bar with the elapsed
    # time, the reader's own progress lines printed above it.
    with progress(f"preparing {data_dir}") as bar:
        prepared = prepare(data_dir, cache_dir=cache, images_dir=images, min_freq=min_freq, force=force,
                           strict=strict, log=bar.log)
    if json_out:
        typer.echo(json.dumps(dict(prepared.manifest, cache_dir=str(prepared.cache_dir), reused=prepared.reused),
                              indent=1, ensure_ascii=False))
        return
    state = "reused" if prepared.reused else "built"
    typer.echo(f"{state} {prepared.cache_dir}: vocabulary {len(prepared.vocab)} words (min frequency {prepared.min_freq})")
    typer.echo(prepared.stats.summary())


def _register_synth() -> None:
    from malm.commands.synth import synth_command  # light (no torch), like this module

    data_app.command("synth")(synth_command)


_register_synth()


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
