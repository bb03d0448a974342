"""`malm data synth OUT --recipes N --seed S`: the typer command (registered by malm/commands/data.py); the
generator itself is `malm.training.synth`.

Only typer at import time; the generator (numpy, Pillow) and rich load inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from malm.console import console  # light: rich loads only when it prints
from malm.progress import progress


def synth_command(
    out: Path = typer.Argument(..., help="Output directory (created; must be empty or a previous synth run)."),
    recipes: int = typer.Option(10_000, "--recipes", help="Number of recipes to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    image_size: int = typer.Option(128, "--image-size", help="Photo side in pixels."),
    workers: int = typer.Option(2, "--workers", help="Processes drawing photos (does not change the output)."),
    force: bool = typer.Option(False, "--force", help="Replace a benchmark previously generated in OUT."),
    json_out: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout."),
) -> None:
    """Generate the procedural food benchmark in the Recipe1M layout (layer1/layer2/det_ingrs + images)."""
    # on use only: keeps Pillow, numpy out of the command line's start
    import json
    from dataclasses import asdict

    # on use only: keeps numpy and Pillow out of the command line's start
    from malm.training.synth.writer import generate


    err = console(stderr=True)  # OUT is a user path: printed as text, never as markup
    with progress("drawing photos", transient=True) as bar:
        stats = generate(out, recipes=recipes, seed=seed, image_size=image_size, workers=workers, force=force,
                         progress=lambda done, total: bar.update(completed=done, total=total))
    if json_out:
        typer.echo(json.dumps(asdict(stats)))
        return
    parts = ", ".join(f"{p} {c['recipes']} ({c['paired']} with photos)" for p, c in stats.per_partition.items())
    err.print(f"wrote {stats.recipes} recipes in {stats.families} families and {stats.images} photos "
              f"to {stats.out_dir} in {stats.seconds:.1f} s: {parts}")
