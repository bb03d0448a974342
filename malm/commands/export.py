"""`malm export`: distil the edge student and export it (and the recipe encoder) into a bundle.

    malm export --checkpoint runs/ht --target onnx --int8 --data data/bench --bundle bundle/
    malm export --checkpoint runs/ht --target coreml --weights palettize6 --data data/bench --bundle bundle/
    malm export --checkpoint runs/ht --target tensorrt --int8 --data data/bench --bundle bundle/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer


def register(app: typer.Typer) -> None:
    app.command("export", help="Distil, quantize and export encoders (onnx | tensorrt | coreml) into a bundle.")(export)


def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="training run directory (config.json, *.safetensors)"),
    target: Literal["onnx", "tensorrt", "coreml"] = typer.Option(..., "--target", help="Export target"),
    data: Path = typer.Option(..., "--data", help="benchmark / Recipe1M data: train images distil and calibrate, "
                                                  "test images measure quality"),
    bundle: Path = typer.Option(..., "--bundle", help="output bundle directory (created or updated)"),
    student: Literal["efficientnet-lite0", "none"] | None = typer.Option(
        None, "--student", help="Edge student (none: the teacher's own image encoder) [default: the own tower, "
                                "unless it has >= 10M parameters or --distill-epochs/--image-size ask for a student]"),
    int8: bool = typer.Option(False, "--int8", help="add an int8 QDQ model (onnx, tensorrt)"),
    calib_images: int | None = typer.Option(None, "--calib-images", help="int8 calibration images [default: 500]"),
    distill_epochs: int | None = typer.Option(None, "--distill-epochs", help="student distillation epochs [default: 10]"),
    image_size: int | None = typer.Option(None, "--image-size", help="student input side [default: the teacher's]"),
    weights: Literal["none", "int8", "palettize6"] | None = typer.Option(None, "--weights", help="coreml weight compression"),
    tag: Literal["best", "last"] = typer.Option("best", "--tag", help="checkpoint tag"),
    recipe_encoder: bool | None = typer.Option(None, "--recipe-encoder/--no-recipe-encoder",
                                               help="also export the recipe encoder (onnx) [default: yes]"),
    tokens: bool | None = typer.Option(None, "--tokens/--no-tokens",
                                       help="also output (and distil) patch tokens and ship the matching head for "
                                            "re-ranking; its fusion weight is chosen on validation photos through "
                                            "the bundle (re-ranking ships off when it does not help) [default: on "
                                            "when the run trained a matching head and its own tower ships]"),
    eval_images: int | None = typer.Option(None, "--eval-images", help="test images for the report [default: 1000]"),
    accept_int8_drop: bool = typer.Option(False, "--accept-int8-drop",
                                          help="ship int8 models that fail the int8 gate (mean cosine to fp32 "
                                               "< 0.98 or R@1 drop > 1.5 points); the report says so"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
) -> None:
    from malm.export.registry import ExportOptions

    # Validate before any heavy import: a wrong flag answers instantly.
    options = ExportOptions(target=target, student=student, int8=int8, calib_images=calib_images,
                            distill_epochs=distill_epochs, image_size=image_size, weights=weights, tag=tag,
                            recipe_encoder=recipe_encoder, tokens=tokens, eval_images=eval_images,
                            accept_int8_drop=accept_int8_drop)
    from malm.export.exporter import ExportRequest, run_export
    from malm.export.report import to_markdown
    from malm.progress import progress

    report = run_export(ExportRequest(checkpoint=checkpoint, data_dir=data, bundle=bundle, options=options),
                        log=lambda m: typer.echo(m, err=True), progress=progress)
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(to_markdown(report))
