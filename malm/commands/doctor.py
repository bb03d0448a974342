"""`malm doctor [--bundle DIR] [--json]`: what this device offers and what the SDK chooses on it.

    malm doctor                         # ONNX Runtime and its providers, TensorRT / CoreML, CPU features, HEIC
    malm doctor --bundle bundle/ --json # + the provider, image-encoder variant (and why), and a full hash check

Exit status: 0 nothing to fix, 1 a problem was found (listed under "problems": no ONNX Runtime, a GPU its
providers cannot use, a bundle that fails verification…). Never imports torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from malm.commands.query import Backend, Variant
from malm.console import console, line, styled
from malm.errors import MalmError


def doctor_report(bundle: Path | None, backend: str = "auto", variant: str = "auto") -> dict[str, Any]:
    # on use only: keeps Pillow, numpy out of the command line's start
    from malm.sdk.diagnostics import runtime_report

    report = runtime_report()
    if bundle is not None and report["hnswlib_build"]["runs_here"] is False:
        report["bundle"] = {"bundle": str(bundle), "error": "not loaded: hnswlib does not run on this CPU"}
    elif bundle is not None:
        try:
            # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
            from malm.sdk import Retriever

            # A doctor checks every byte: hash all files now, whatever a previous load stamped.
            report["bundle"] = Retriever.load(bundle, backend=backend, variant=variant, verify="full").info()
        except MalmError as e:
            report["bundle"] = {"bundle": str(bundle), "error": str(e)}
            report["problems"].append(str(e))
    return report


def _yes(flag: Any) -> Any:
    return styled("yes", "green") if flag else styled("no", "dim")


def _print(report: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    # Paths, CPU names, manifest strings and error messages are data: plain text, colour only via `styled`.
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    ort = report["onnxruntime"]
    cpu = report["cpu"]
    table.add_row("platform", f"{report['platform']}, Python {report['python']}, {report['cpu_count']} CPUs")
    table.add_row("CPU", f"{cpu['model']}: {' '.join(cpu['flags']) or 'no listed features'} ({cpu['source']})")
    table.add_row("int8 path", str(cpu["int8_path"]))
    dists = ", ".join(f"{k} {v}" for k, v in ort["distributions"].items()) or "none installed"
    table.add_row("ONNX Runtime", f"{ort['version'] or '-'} ({dists})")
    table.add_row("providers", ", ".join(ort["providers_available"]) or "-")
    trt, coreml = report["tensorrt"], report["coreml"]
    trt_dists = ", ".join(f"{k} {v}" for k, v in trt["distributions"].items())
    table.add_row("TensorRT", line("ORT provider ", _yes(trt["ort_provider"]), ", python module ",
                                   _yes(trt["python_module"]), f" ({trt_dists})" if trt_dists else ""))
    table.add_row("CoreML", line("ORT provider ", _yes(coreml["ort_provider"]), ", macOS ", _yes(coreml["macos"]),
                                 f", coremltools {coreml['coremltools'] or '-'}"))
    for name, row in report["backends"].items():  # the SDK's backend table, row by row
        table.add_row(f"backend {name}", line(_yes(row["available"]), f" ({row['install']})" if row["install"] else ""))
    gpu = report["gpu"]
    table.add_row("NVIDIA GPU", line(_yes(gpu["nvidia_gpu"]), " (Jetson)" if gpu["jetson"] else ""))
    fmt = report["image_formats"]
    table.add_row("photos", line("JPEG draft decoding, WebP ", _yes(fmt["webp"]), ", HEIC ",
                                 f"pillow-heif {fmt['heic']}" if fmt["heic"]
                                 else styled("no (pip install 'malm[heic]')", "dim")))
    table.add_row("hnswlib", report["hnswlib"] or "-")
    hb = report["hnswlib_build"]
    table.add_row("hnswlib build", Text(f"{hb['instructions']} instructions ({hb['source'] or '-'}); {hb['check']}"))
    b = report.get("bundle")
    if b is not None and "error" not in b:
        v = b["verification"]
        table.add_row("bundle", f"{b['bundle']}: {b['recipes']} recipes, dim {b['dim']}, "
                      f"{v['files']} files sha256-verified ({v['mode']}), format {v['format_version']}")
        table.add_row("runs on", f"{b['backend']} {b['device']} (providers: {', '.join(b['providers'])})")
        table.add_row("image encoder", f"{b['variant']} of {', '.join(b['variants_present'])}: {b['variant_reason']}")
        for key, value in b.items():  # sections other SDK parts add (e.g. the int8 self-check)
            if key not in _SHOWN and value is not None:
                table.add_row(key.replace("_", " "), json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    out = console()
    out.print(table)
    for p in report["problems"]:
        out.print(styled("problem", "red"), ": ", str(p), sep="")
    if not report["problems"]:
        out.print(styled("no problems found", "green"))


_SHOWN = {"bundle", "backend", "variant", "device", "recipes", "dim", "rerank", "providers", "variant_reason",
          "variants_present", "threads", "verification", "cpu"}


def doctor_command(
    bundle: Path | None = typer.Option(None, "--bundle", help="Also load this bundle: verify every file, show "
                                       "the provider and image encoder it would run with"),
    json_out: bool = typer.Option(False, "--json", help="JSON on stdout"),
    backend: Backend = typer.Option("auto", "--backend", help="Encoder runtime"),
    variant: Variant = typer.Option("auto", "--variant", help="Image encoder variant"),
) -> None:
    """Show what this device offers (ONNX Runtime providers, TensorRT, CoreML, CPU features) and what malm picks."""
    report = doctor_report(bundle, backend, variant)
    if json_out:
        typer.echo(json.dumps(report, ensure_ascii=False))
    else:
        _print(report)
    if report["problems"]:
        sys.exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
