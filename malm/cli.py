"""The `malm` command line: a thin face over the library.

Each command lives in `malm/commands/<part>.py` and imports its heavy machinery (torch, onnx, …)
inside its body, so `malm --help` and `malm query` start fast and never import torch.

    malm data synth OUT --recipes 10000 --seed 0
    malm train --data DATA --preset malm-tiny --out runs/malm
    malm export --checkpoint runs/malm --target onnx --int8 --data DATA --bundle bundle/
    malm query photo.jpg --bundle bundle/
"""

from __future__ import annotations

import sys

import typer

from malm.errors import MalmError

app = typer.Typer(
    name="malm",
    help="Image-to-recipe retrieval: train, evaluate, export, index and query.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    # Order here is the order in `malm --help`.
    from malm.commands import bench, data, demo, evaluate, export, index, query, train

    for module in (demo, data, train, evaluate, export, index, query, bench):
        module.register(app)


_register()


def main() -> None:
    """Console entry point: user errors print one clear line and exit 2, never a traceback."""
    try:
        rc = app(standalone_mode=False)
        # With standalone_mode=False a `typer.Exit(n)` comes back as the return value, not as an exception.
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except MalmError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        # Disk full, permission denied, read-only filesystem…: about the user's files, not a bug in malm.
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors carry their own exit codes
        # typer >= 0.2x vendors its own click (plain `click` may not even be installed): recognize a
        # usage error by its interface, not its class.
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
