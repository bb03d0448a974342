"""`malm bench`: speed, size and scale benchmarks (the code lives in the repo's `benchmarks/` folder).

    malm bench --quick                          # smoke run, a minute or two, small sizes
    malm bench --out benchmarks/results         # the full run README quotes (~15 min on 2 cores)
    malm bench --bundle B --checkpoint RUN      # measure an existing model instead of a tiny built one
    malm bench --only index --index-sizes 10000,100000

`benchmarks/` sits at the repository root, not inside the installed package: benchmark code, results
and their history belong to the source tree (and the wheel a device installs stays small), so this
command finds the folder beside the `malm` package of a source checkout (editable install), or in
the current directory; from a plain installed package it says that it needs the source tree.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

import malm
from malm.commands._options import split_ints, split_list
from malm.errors import MalmError

NEEDS_SOURCE = ("malm bench runs the benchmarks/ folder of a malm source checkout, which the installed package "
                "does not include: git clone the repository and `pip install -e '.[all,bench]'`, then run "
                "`malm bench` (or `python -m benchmarks`) there")


def find_suite() -> Path:
    """The source checkout whose `benchmarks/suite/` this command runs: the one beside the imported `malm`
    package (an editable install), else the current directory; a clear error for a plain installed package."""
    for root in (Path(malm.__file__).resolve().parent.parent, Path.cwd()):
        if (root / "benchmarks" / "suite" / "runner.py").is_file():
            return root
    raise MalmError(NEEDS_SOURCE)


def _import_suite(root: Path) -> Path:
    """Import that checkout's `benchmarks` package (it imports itself by that top-level name), refusing
    another package of the same name that would otherwise run instead."""
    import importlib

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    runner = importlib.import_module("benchmarks.suite.runner")
    found = Path(runner.__file__ or "").resolve().parent.parent.parent
    if found != root.resolve():
        raise MalmError(f"malm bench: `benchmarks` imports from {found}, not from the checkout {root}; "
                        "run it from the malm source checkout")
    return root


def _ints(values: list[str] | None, name: str) -> tuple[int, ...]:
    ints = tuple(split_ints(values, name))
    if not ints:
        raise MalmError(f"bench: {name} is empty")
    return ints


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        quick: bool = typer.Option(False, "--quick", help="Small sizes: a smoke test of the benchmark code (numbers not quotable)."),
        out: Path | None = typer.Option(None, "--out", help="Where bench.json and bench.md go (default: benchmarks/results, or benchmarks/results/quick with --quick)."),
        work: Path | None = typer.Option(None, "--work", help="Built data/model/bundle and scratch, reused on a re-run (default: runs/bench or runs/bench-quick)."),
        bundle: Path | None = typer.Option(None, "--bundle", help="Measure this bundle instead of building a tiny one."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Training run of the bundle's model (the torch teacher)."),
        data: Path | None = typer.Option(None, "--data", help="Dataset (Recipe1M layout) for building and calibration."),
        only: list[str] | None = typer.Option(None, "--only", help="Sections to run, repeated or comma-separated (others are kept from an existing bench.json): "
                                              "peak,bundle,latency,encoder,cold_start,training,index."),
        threads: list[str] | None = typer.Option(None, "--threads", help="Thread counts for latency, repeated or comma-separated (default: 1,2)."),
        index_sizes: list[str] | None = typer.Option(None, "--index-sizes", help="Index sizes, repeated or comma-separated (default: 10000,100000,1000000; quick: 500,2000)."),
        index_dim: int | None = typer.Option(None, "--index-dim", help="Vector dim for the index section (default: the model's)."),
        deploy_recipes: int = typer.Option(100_000, "--deploy-recipes", help="Recipes in the deployment-size bundle (latency, cold start; full runs)."),
        budget_min: float = typer.Option(15.0, "--budget-min", help="Soft time limit: slow optional peer builds are skipped past it."),
        seed: int = typer.Option(0, "--seed"),
        json_out: bool = typer.Option(False, "--json", help="Print bench.json's content on stdout (the log stays on stderr)."),
        device: str = typer.Option("auto", "--device", help="Training section: cpu, cuda or auto (full presets on a GPU, tiny ones on CPU)."),
    ) -> None:
        """Benchmark query latency, encoder throughput, index at scale, training and bundle size."""
        root = _import_suite(find_suite())
        # on use only: the suite is in the source checkout found above, not in the package
        from benchmarks.suite.context import SECTIONS, BenchOptions
        from benchmarks.suite.runner import failed_sections, run
        from benchmarks.suite.targets import evaluate  # noqa: F401  (fail early if the suite is broken)

        sections = tuple(split_list(only)) or SECTIONS  # BenchOptions rejects unknown ones
        options = BenchOptions(
            out=out or root / "benchmarks" / "results" / ("quick" if quick else ""),
            work=work or root / "runs" / ("bench-quick" if quick else "bench"),
            quick=quick, bundle=bundle, checkpoint=checkpoint, data=data, sections=sections,
            threads=_ints(threads or ["1,2"], "--threads"),
            index_sizes=_ints(index_sizes, "--index-sizes") if index_sizes else
            ((500, 2000) if quick else (10_000, 100_000, 1_000_000)),
            index_dim=index_dim, deploy_recipes=deploy_recipes, budget_s=budget_min * 60, seed=seed, device=device,
            command="malm bench " + shlex.join(sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []),
        )
        results = run(options)
        failed = failed_sections(results)
        if json_out:
            import json

            typer.echo(json.dumps(results, indent=1, default=str))
            if failed:
                raise typer.Exit(1)
            return
        typer.echo(f"wrote {options.out / 'bench.json'} and {options.out / 'bench.md'} in {results['duration_s']:.0f} s")
        for t in results.get("targets", []):
            mark = {True: "met", False: "MISSED", None: "n/a"}[t["passed"]]
            ratio = "" if t["ratio"] is None else f" (ratio {t['ratio']:.2f})"
            typer.echo(f"  [{mark}] {t['target']}: {t['measured']}{ratio}, goal {t['goal']}")
        if failed:
            typer.echo(f"error: benchmark section(s) failed: {', '.join(failed)} (details in bench.json)", err=True)
            raise typer.Exit(1)
