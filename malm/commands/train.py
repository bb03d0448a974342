"""`malm train`: train a preset on a Recipe1M-layout folder (the same loop runs under torchrun).

    malm train --data DATA --preset ht-tiny --out runs/ht-tiny
    malm train --data DATA --preset ht --out runs/ht --image-init vit_b16.safetensors --device cuda
    malm train --data DATA --out runs/ht-tiny --resume
    malm train --help        # the flags: one parser, `malm.training.train.build_parser`, shared with torchrun
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    # The arguments go untouched to the training module's own parser (it also serves torchrun), so the
    # flags live in one place; typer neither parses them nor adds its own --help.
    @app.command("train", add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train_command(ctx: typer.Context) -> None:
        """Train image and recipe encoders; keeps `last` and `best` (validation image→recipe R@1) checkpoints."""
        # on use only: keeps Pillow, hnswlib, numpy, torch out of the command line's start
        from malm.training.train import cli

        cli(list(ctx.args), prog="malm train")
