"""`malm demo`: the whole pipeline on the procedural benchmark, on CPU (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder; a rerun reuses what is done"),
    recipes: int = typer.Option(3000, "--recipes", help="Size of the generated benchmark"),
    seed: int = typer.Option(0, "--seed", help="Benchmark seed"),
    preset: str = typer.Option("malm-tiny", "--preset", help="Training preset"),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (default: the preset's)"),
    distill_epochs: int = typer.Option(6, "--distill-epochs", help="Student distillation epochs"),
    coreml: bool = typer.Option(True, "--coreml/--no-coreml", help="Also convert the student to CoreML"),
    queries: int = typer.Option(5, "--queries", help="Held-out test photos to query"),
) -> None:
    """Generate data → train → evaluate → export int8 ONNX (+ CoreML) → index → query → summary."""
    from malm.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=out, recipes=recipes, seed=seed, preset=preset, epochs=epochs,
                     distill_epochs=distill_epochs, coreml=coreml, queries=queries)
    run_demo(cfg, log=lambda m: typer.echo(m, err=True))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
