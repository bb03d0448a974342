"""The one way the command line prints through rich: every string is data, never markup.

Recipe titles come from whoever added them (the example app takes them from the web), photo paths from
folders a user downloaded, manifest strings from whoever made the bundle. rich would read `[/]` in any of
them as markup (a crash: MarkupError), `[link=…]` as a hidden terminal hyperlink and `:smile:` as an emoji,
and a raw escape sequence would reach the terminal as is. So:

    from malm.console import console, styled

    out = console()                              # markup, emoji and highlighting off for every str
    out.print(table)                             # cells, titles and captions are plain text
    out.print(styled("error", "red"), ": ", message)
    table.add_row("TensorRT", line("provider ", styled("yes", "green")))

Colour is added only with `styled` (a `rich.text.Text` with a style), never with markup in a string.
`printable` is the same clean-up for text that does not go through rich (click's `echo`).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["console", "line", "printable", "styled"]

# C0 controls except tab and newline, DEL and C1 controls (0x9b is an 8-bit CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    r"""`str(value)` with terminal control characters shown as `\xNN`, so no data can move the cursor,
    retitle the window or open a hyperlink (ESC ] 8)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def console(stderr: bool = False, **options: Any) -> Any:
    """A rich Console that renders every string as literal text (see the module docstring); `options` go
    to rich's Console (file, width, force_terminal…)."""
    from rich.console import Console

    class _DataConsole(Console):
        # Every str rich prints passes here: console.print arguments, table cells, titles, captions.
        def render_str(self, text: str, **kwargs: Any) -> Any:
            kwargs.update(markup=False, emoji=False)
            return super().render_str(printable(text), **kwargs)

    return _DataConsole(stderr=stderr, **options, markup=False, emoji=False, highlight=False)


def styled(text: object, style: str) -> Any:
    """`text` as literal text in `style` (e.g. "red", "bold"): the only way to colour output."""
    from rich.text import Text

    return Text(printable(text), style=style)


def line(*parts: Any) -> Any:
    """One rich Text from plain strings (data, cleaned by `printable`) and `styled` pieces, in order."""
    from rich.text import Text

    return Text.assemble(*(p if isinstance(p, Text) else printable(p) for p in parts))
