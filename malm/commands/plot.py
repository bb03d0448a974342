"""`malm plot RUN [--out DIR]`: PNG curves (losses, validation R@1) of a training run, with matplotlib."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def plot_command(
    run: Path = typer.Argument(..., help="Training run directory (reads its metrics.jsonl)"),
    out: Path | None = typer.Option(None, "--out", help="Folder for the PNGs (default: the run directory)"),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths as JSON on stdout"),
) -> None:
    """Plot a run's losses and validation R@1 to PNG files (needs malm[plot])."""
    # on use only: keeps matplotlib out of the command line's start
    from malm.plot import plot_run

    paths = plot_run(run, out)
    if json_out:
        typer.echo(json.dumps({"files": [str(p) for p in paths]}))
    else:
        for p in paths:
            typer.echo(f"wrote {p}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot_command)
