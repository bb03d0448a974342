"""Shared pieces of the command line: the list-option style and the help-text escaping.

List options have ONE style: repeat the option, and each value may itself be a comma-separated list —
`--ids A --ids B`, `--ids A,B` and (for `index remove`, as the README spells it) `--ids A B` all mean the
same. Choices come from the library's own tables (export targets, students, weight modes, SDK backends
and variants, splits, protocols) through `choice`: the table is the only list. Those tables are light
modules (stdlib only), so reading them at start-up costs nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Literal

import typer

from malm.errors import MalmError


def choice(names: Iterable[str]) -> Any:
    """`Literal[...]` of a table's names: typer shows them in --help and refuses anything else."""
    return Literal[tuple(names)]


def split_list(values: Iterable[str] | None) -> list[str]:
    """Repeated option values, each possibly `a,b,c` → flat list without blanks, in order."""
    return [v.strip() for value in (values or ()) for v in str(value).split(",") if v.strip()]


def split_ints(values: Iterable[str] | None, flag: str) -> list[int]:
    """`split_list` for integers (`_` allowed as a thousands separator: 1_000_000)."""
    out = []
    for v in split_list(values):
        try:
            out.append(int(v.replace("_", "")))
        except ValueError:
            raise MalmError(f"{flag}: {v!r} is not an integer (give integers, repeated or comma-separated)") from None
    return out


def escape_help(app: typer.Typer) -> None:
    """Make every help text literal: typer renders help through rich markup, which eats `[det_ingrs.json]`.

    Walks the registered commands and groups once, at start-up (help texts in this CLI are never markup).
    """
    from rich.markup import escape

    for info in app.registered_commands:
        callback = info.callback
        if callback is None:
            continue
        if info.help is None and callback.__doc__:
            info.help = escape(inspect.getdoc(callback) or "")
        elif info.help is not None:
            info.help = escape(info.help)
        for param in inspect.signature(callback).parameters.values():
            default: Any = param.default
            if getattr(default, "help", None) and not getattr(default, "_malm_escaped", False):
                default.help = escape(default.help)
                default._malm_escaped = True
    for group in app.registered_groups:
        if group.typer_instance is not None:
            escape_help(group.typer_instance)
