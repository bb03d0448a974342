"""The `malm` command line: a thin face over the library.

Each command lives in `malm/commands/<part>.py` and imports its heavy machinery (torch, onnx, …)
inside its body, so `malm --help` and `malm query` start fast and never import torch.

    malm data synth OUT --recipes 10000 --seed 0
    malm train --data DATA --preset malm-tiny --out runs/malm
    malm export --checkpoint runs/malm --target onnx --int8 --data DATA --bundle bundle/
    malm query photo.jpg --bundle bundle/
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

from malm._version import __version__
from malm.commands import bench, bundle, data, demo, doctor, evaluate, export, index, plot, query, train
from malm.commands._options import escape_help
from malm.console import printable
from malm.crashlog import write_crash_file
from malm.errors import MalmError

app = typer.Typer(
    name="malm",
    help="Image-to-recipe retrieval: train, evaluate, export, index and query.\n\n"
         "An unexpected error prints one line and where its traceback was written; "
         "add --debug (anywhere) or set MALM_DEBUG=1 to see the traceback itself.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # -h everywhere (click hands help_option_names down to every subcommand's context).
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"malm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass  # the options above only; the app's help text is Typer(help=...)


def _register() -> None:
    # Order here is the order in `malm --help`.
    for module in (demo, data, train, plot, evaluate, export, index, bundle, query, bench, doctor):
        module.register(app)
    escape_help(app)


_register()


def _command_tree(typer_app: typer.Typer) -> dict[str, Any]:
    """{"index": {"build": {}, …}, "query": {}, …} from the registered commands (no click objects built)."""
    tree: dict[str, Any] = {}
    for info in typer_app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else None)
        if name:
            tree[name] = {}
    for group in typer_app.registered_groups:
        if group.name and group.typer_instance is not None:
            tree[group.name] = _command_tree(group.typer_instance)
    return tree


_COMMANDS = _command_tree(app)


def command_name(argv: list[str]) -> str:
    """The (sub)command an argument list names, e.g. "index add" (for error lines and objects); "" if none."""
    names: list[str] = []
    node = _COMMANDS
    for token in argv:
        if token.startswith("-") or token not in node:
            break
        names.append(token)
        node = node[token]
    return " ".join(names)


def _fail(argv: list[str], message: str, code: int, show: Callable[[], None] | None = None) -> NoReturn:
    """Exit with `code` after one line on stderr; with --json also an error object on stdout, so a
    program reading stdout always gets JSON: {"error": ..., "command": ..., "exit_code": ...}."""
    _json_error(argv, message, code)
    if show is not None:
        show()
    else:
        # Messages quote user data (paths, manifest strings, titles): no control character reaches the terminal.
        typer.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def _json_error(argv: list[str], message: str, code: int) -> None:
    if "--json" in argv:
        typer.echo(json.dumps({"error": message, "command": command_name(argv), "exit_code": code},
                              ensure_ascii=False))


def _command_name(argv: list[str]) -> str:
    """`malm export`, `malm index build`: the command an argument list names, for error lines."""
    return " ".join(["malm", *command_name(argv).split()])


def _write_traceback(command: str) -> Path | None:
    """Write the current exception's traceback to a private crash file; None if nowhere is writable."""
    return write_crash_file(command, sys.argv, traceback.format_exc())


def main() -> None:
    """Console entry point: a user never sees a traceback unless they ask for it (--debug, MALM_DEBUG=1).

    User errors (MalmError, OSError about their files) print one clear line and exit 2; anything else is a
    bug in malm: one line naming the command and the error, the traceback written to a file, exit 1.
    """
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("MALM_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = _command_name(argv)
    try:
        rc = app(args=argv, prog_name="malm", standalone_mode=False)
        # With standalone_mode=False a `typer.Exit(n)` comes back as the return value, not as an exception.
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except MalmError as e:
        _fail(argv, str(e), 2)
    except OSError as e:
        # Disk full, permission denied, read-only filesystem…: about the user's files, not a bug in malm.
        _fail(argv, str(e), 2)
    except (typer.Abort, KeyboardInterrupt):
        _fail(argv, "aborted", 130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:
        # typer >= 0.2x vendors its own click (plain `click` may not even be installed): recognize a
        # usage error by its interface, not its class.
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            _fail(argv, message, e.exit_code, show=e.show)
        if debug:
            raise
        where = _write_traceback(command)
        hint = f"traceback in {where}" if where else "no traceback file could be written"
        message = f"{command} failed unexpectedly: {type(e).__name__}: {e}"
        _json_error(argv, message, 1)
        typer.echo(f"error: {printable(message)} ({hint}; rerun with --debug to show it)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
