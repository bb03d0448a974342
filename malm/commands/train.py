"""`malm train`: train a preset on a Recipe1M-layout folder (the same loop runs under torchrun).

    malm train --data DATA --preset ht-tiny --out runs/ht-tiny
    malm train --data DATA --preset ht --out runs/ht --image-init vit_b16.safetensors --device cuda
    malm train --data DATA --out runs/ht-tiny --resume
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def train_command(
    data: Path = typer.Option(..., "--data", help="Recipe1M-layout folder (layer1.json, layer2.json, images/)"),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, config, metrics.jsonl)"),
    preset: str | None = typer.Option(None, "--preset", help="ht, ht-tiny, tnlbt, tnlbt-tiny, malm, malm-tiny or a .json"),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override train.batch_size (global)"),
    eval_size: int | None = typer.Option(None, "--eval-size", help="Validation pairs for R@1 (default 1000)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped"),
    image_init: Path | None = typer.Option(None, "--image-init", help="Pretrained ViT .safetensors (timm/open_clip)"),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config value: key=value (repeatable)"),
    save_every: int = typer.Option(0, "--save-every", help="Also save the resumable state every N steps"),
    cache: Path | None = typer.Option(None, "--cache", help="Data cache folder (default DATA/.malm_cache)"),
    stop_after_steps: int = typer.Option(0, "--stop-after-steps", hidden=True),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar"),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="Also log metrics to tensorboard "
                                               "(RUN/tensorboard, needs malm[tensorboard]) and/or csv (RUN/metrics.csv); "
                                               "repeated or comma-separated; off by default"),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout"),
) -> None:
    """Train image and recipe encoders; keeps `last` and `best` (validation image→recipe R@1) checkpoints."""
    import argparse

    from malm.training.train import options_from_args, run

    args = argparse.Namespace(data=str(data), out=str(out), preset=preset, epochs=epochs, batch_size=batch_size,
                              eval_size=eval_size, device=device, resume=resume,
                              image_init=str(image_init) if image_init else None, set=set_ or [],
                              save_every=save_every, cache=str(cache) if cache else None,
                              stop_after_steps=stop_after_steps, no_progress=no_progress, report_to=report_to)
    summary = run(options_from_args(args))
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        best = summary["best"]
        r1 = f"{best['r1']:.2f}" if best.get("metrics") else "n/a"
        typer.echo(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s; best epoch {best['epoch']} "
                   f"val image→recipe R@1 {r1}; run in {summary['run_dir']}", err=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
