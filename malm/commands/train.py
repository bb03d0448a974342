"""`malm train`: train a preset on a Recipe1M-layout folder; the same command is the torchrun entry.

    malm train --data DATA --preset ht-tiny --out runs/ht-tiny
    malm train --data DATA --preset ht --out runs/ht --image-init vit_b16.safetensors --device cuda
    malm train --data DATA --out runs/ht-tiny --resume
    malm train --preset tnlbt-tiny --set train.lr=3e-4 --show-config      # the resolved config, then exit
    torchrun --nproc_per_node 8 -m malm train --data DATA --preset ht --out runs/ht --json
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:29500 -m malm train ...

One parser (this typer command): `python -m malm` / `python -m malm.cli` run the same app, so torchrun starts
one process per rank with exactly the flags `malm train` has. DDP is detected from RANK / WORLD_SIZE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import typer

from malm.errors import MalmError


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        data: Path = typer.Option(None, "--data", help="Recipe1M folder (layer1.json, layer2.json, images/)."),
        out: Path = typer.Option(None, "--out", help="Run directory."),
        preset: str = typer.Option(None, "--preset", help="Preset name (ht, ht-tiny, tnlbt, malm, malm-tiny, ...) "
                                                           "or a config / preset .json."),
        epochs: int = typer.Option(None, "--epochs", help="Override train.epochs."),
        batch_size: int = typer.Option(None, "--batch-size", help="Global batch size (override train.batch_size)."),
        eval_size: int = typer.Option(None, "--eval-size", help="Validation pairs for image→recipe R@1 (default 1000)."),
        device: Literal["auto", "cpu", "cuda"] = typer.Option("auto", "--device", help="Where to train."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
        image_init: Path = typer.Option(None, "--image-init", help="Pretrained ViT weights (.safetensors, timm or "
                                                                   "open_clip names)."),
        set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                       help="Override a config value, e.g. train.lr=3e-4 (repeatable)."),
        save_every: int = typer.Option(0, "--save-every", help="Also save the resumable state every N steps."),
        cache: Path = typer.Option(None, "--cache", help="Data cache folder (default: DATA/.malm_cache)."),
        stop_after_steps: int = typer.Option(0, "--stop-after-steps", hidden=True),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
        report_to: list[str] = typer.Option(None, "--report-to", metavar="tensorboard|csv",
                                            help="Also log metrics to TensorBoard (RUN/tensorboard) and/or "
                                                 "RUN/metrics.csv."),
        show_config: bool = typer.Option(False, "--show-config", help="Print the resolved config (JSON) and exit."),
        json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout (rank 0)."),
    ) -> None:
        """Train image and recipe encoders; keeps `last` and `best` (validation image→recipe R@1) checkpoints."""
        # on use only: keeps numpy and torch out of the command line's start
        from malm.training.config import parse_overrides
        from malm.training.run_state import resolve_cli_config

        overrides = parse_overrides(list(set_ or []))
        for key, value in (("train.epochs", epochs), ("train.batch_size", batch_size), ("train.eval_size", eval_size)):
            if value is not None:
                overrides[key] = value
        if resume and out is None:
            raise MalmError("--resume needs --out (the run to continue)")
        config = resolve_cli_config(preset, overrides, out if resume else None)
        if show_config:
            if config is None:  # --resume without overrides: the run's own config
                # on use only: keeps torch out of the command line's start
                from malm.training.checkpoint import read_config

                config = read_config(out)
            typer.echo(config.to_json(), nl=False)
            return
        for flag, path in (("--data", data), ("--out", out)):
            if path is None:
                raise MalmError(f"{flag} is required")
        _train(dict(data_dir=data, out_dir=out, config=config, device=device, resume=resume, image_init=image_init,
                    save_every=save_every, cache_dir=cache, stop_after_steps=stop_after_steps,
                    progress_bar=not no_progress, report_to=report_to), json_out)


def _train(options: dict[str, Any], json_out: bool) -> None:
    # on use only: keeps torch, numpy and tensorboardX out of the command line's start
    from malm.metrics_log import parse_report_to
    from malm.training import distributed
    from malm.training.train import TrainOptions, run

    summary = run(TrainOptions(**{**options, "report_to": parse_report_to(options["report_to"])}))
    if not distributed.detect().is_main:
        return
    if json_out:
        typer.echo(json.dumps(summary))
        return
    best = summary["best"]
    r1 = f"{best['r1']:.2f}" if best.get("metrics") else "n/a"
    typer.echo(f"done: {summary['steps']} steps in {summary['seconds']:.0f}s; best epoch {best['epoch']} "
               f"val image→recipe R@1 {r1}; run in {summary['run_dir']}", err=True)
