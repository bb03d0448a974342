"""`malm export`: distil the edge student and export it (and the recipe encoder) into a bundle.

    malm export --checkpoint runs/ht --target onnx --int8 --data data/bench --bundle bundle/
    malm export --checkpoint runs/ht --target coreml --weights palettize6 --data data/bench --bundle bundle/
    malm export --checkpoint runs/ht --target tensorrt --int8 --data data/bench --bundle bundle/

The export options (target, student, --int8, …) are generated from `ExportOptions`' fields, which carry
their flag, help and choices (malm/export/registry.py): a new option is a field there, nothing here.
"""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import typer

from malm.commands._options import choice
from malm.export.registry import TARGETS, ExportOptions
from malm.progress import progress


def register(app: typer.Typer) -> None:
    app.command("export", help=f"Distil, quantize and export encoders ({' | '.join(TARGETS)}) into a bundle.")(export)


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="training run directory (config.json, *.safetensors)"),
    data: Path = typer.Option(..., "--data", help="benchmark / Recipe1M data: train images distil and calibrate, "
                                                  "test images measure quality"),
    bundle: Path = typer.Option(..., "--bundle", help="output bundle directory (created or updated)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    **chosen: Any,
) -> None:
    # Validate before any heavy import: a wrong flag answers instantly.
    options = ExportOptions(**chosen)
    # on use only: keeps Pillow, numpy, torch out of the command line's start
    from malm.export.exporter import ExportRequest, run_export
    from malm.export.report import to_markdown

    report = run_export(ExportRequest(checkpoint=checkpoint, data_dir=data, bundle=bundle, options=options),
                        log=lambda m: typer.echo(m, err=True), progress=progress)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(to_markdown(report))


def _option_parameters() -> list[inspect.Parameter]:
    """One typer option per `ExportOptions` field, from the flag, help and choices the field carries."""
    hints = typing.get_type_hints(ExportOptions)
    params = []
    for f in fields(ExportOptions):
        annotation = hints[f.name]
        if f.metadata["choices"]:
            names = choice(f.metadata["choices"])
            annotation = names | None if type(None) in typing.get_args(annotation) else names
        default = ... if f.default is MISSING else f.default
        option = typer.Option(default, f.metadata["flag"], help=f.metadata["help"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def _with_export_options() -> None:
    """Give `export` the generated options: typer reads `__signature__` and `__annotations__`."""
    fixed = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for p in inspect.signature(export, eval_str=True).parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    first, last = fixed[:-1], fixed[-1:]  # --json stays last in --help
    params = [*first, *_option_parameters(), *last]
    export.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    export.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}


_with_export_options()
