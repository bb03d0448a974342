"""`malm demo`: the whole pipeline on the procedural benchmark, on CPU (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from malm.console import printable  # light (stdlib only; rich is not imported by it)
from malm.demo import DemoConfig  # light (stdlib only): the defaults live in one place


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder; a rerun reuses what is done"),
    recipes: int = typer.Option(DemoConfig.recipes, "--recipes", help="Size of the generated benchmark"),
    seed: int = typer.Option(DemoConfig.seed, "--seed", help="Benchmark seed"),
    preset: str = typer.Option(DemoConfig.preset, "--preset", help="Training preset"),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (default: the preset's)"),
    distill_epochs: int = typer.Option(DemoConfig.distill_epochs, "--distill-epochs", help="Student distillation epochs"),
    coreml: bool = typer.Option(True, "--coreml/--no-coreml", help="Also convert the image encoder to CoreML"),
    queries: int = typer.Option(DemoConfig.queries, "--queries", help="Held-out test photos to query"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (the log stays on stderr)"),
    student: str = typer.Option(DemoConfig.student, "--student",
                                help="efficientnet-lite0 (distilled student) | none (the teacher's own image tower)"),
) -> None:
    """Generate data → train → evaluate → export int8 ONNX (+ CoreML) → index → query → summary + report.html."""
    # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
    from malm.demo import run_demo

    cfg = DemoConfig(out=out, recipes=recipes, seed=seed, preset=preset, epochs=epochs,
                    distill_epochs=distill_epochs, coreml=coreml, queries=queries, student=student)
    summary = run_demo(cfg, log=lambda m: typer.echo(printable(m), err=True))  # the log quotes recipe titles
    if json_out:
        import json

        typer.echo(json.dumps(summary, indent=1, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
