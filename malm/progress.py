"""One progress bar for every slow step (data prepare, synth, train, distillation, calibration, eval, bench).

    from malm.progress import progress

    with progress("encoding recipes", total=len(records)) as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))

    with progress("train", total=steps, fields={"loss": float("nan")},
                  fmt="loss {task.fields[loss]:.4f}") as bar:
        bar.update(completed=step, loss=loss)

Rich, on stderr, so `--json` on stdout stays clean. When stderr is not a terminal (CI logs, pipes) the bar is
transient (nothing but the final state is left behind); `enabled=False` or MALM_NO_PROGRESS=1 gives a bar
that does nothing, so library code can always call it. Only stdlib at import: rich loads when a bar starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["Bar", "progress", "progress_enabled"]


def progress_enabled() -> bool:
    """False when MALM_NO_PROGRESS is set to a non-empty value other than 0 (tests, batch jobs)."""
    return os.environ.get("MALM_NO_PROGRESS", "") in ("", "0")


class Bar:
    """Handle to one bar: `advance(n)`, `update(completed=, total=, **fields)`, `log(message)`.

    A disabled bar accepts the same calls and does nothing; `bar.completed` is tracked either way.
    """

    def __init__(self, rich_progress: Any = None, task_id: Any = None, total: float | None = None) -> None:
        self._progress = rich_progress
        self._task = task_id
        self.total = total
        self.completed = 0.0

    def advance(self, n: float = 1) -> None:
        self.completed += n
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __call__(self, n: float = 1) -> None:
        # Callable like the `progress(n)` callbacks the library already takes (edge_index.builder).
        self.advance(n)

    def update(self, completed: float | None = None, total: float | None = None, **fields: Any) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total, **fields)

    def log(self, message: str) -> None:
        """A line above the bar (plain stderr when there is no bar)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            import sys

            print(message, file=sys.stderr)


@contextmanager
def progress(label: str, total: float | None = None, *, enabled: bool = True, completed: float = 0,
             fields: Mapping[str, Any] | None = None, fmt: str = "", transient: bool | None = None) -> Iterator[Bar]:
    """A bar labelled `label` on stderr for the `with` block; `total=None` is an indeterminate bar.

    fields/fmt: extra live values shown after the count, e.g. fields={"loss": nan},
    fmt="loss {task.fields[loss]:.4f}" (rich's column format, see rich.progress.TextColumn).
    """
    if not (enabled and progress_enabled()):
        bar = Bar(total=total)
        bar.completed = completed
        yield bar
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fmt:
        columns.append(TextColumn(fmt))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console,
                  transient=(not console.is_terminal) if transient is None else transient) as rich_progress:
        task = rich_progress.add_task(escape(label), total=total, completed=completed, **dict(fields or {}))
        bar = Bar(rich_progress, task, total)
        bar.completed = completed
        yield bar
