"""malm.progress: the one progress helper (rich on stderr, stdout left to --json)."""

from __future__ import annotations

import subprocess
import sys

from malm.progress import progress


def test_bar_counts_and_draws_on_stderr_only(capsys, monkeypatch):
    monkeypatch.delenv("MALM_NO_PROGRESS", raising=False)
    with progress("encoding [recipes]", total=10, transient=False) as bar:
        bar.advance(3)
        bar(2)  # callable like the library's progress callbacks
        bar.update(completed=9, total=12)
        bar.log("a [note] above the bar")
    out, err = capsys.readouterr()
    assert out == ""
    assert bar.completed == 9 and bar.total == 12
    assert "encoding [recipes]" in err  # the label is escaped, not eaten as rich markup
    assert "a [note] above the bar" in err
    assert "9/12" in err


def test_disabled_bar_is_silent_and_still_counts(capsys, monkeypatch):
    monkeypatch.setenv("MALM_NO_PROGRESS", "1")
    with progress("x", total=5, fields={"loss": 0.0}, fmt="{task.fields[loss]}") as bar:
        bar.advance(2)
        bar.update(loss=1.0)
    with progress("y", total=5, enabled=False) as other:
        other.advance()
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")
    assert bar.completed == 2 and other.completed == 1


def test_live_fields():
    with progress("train", total=4, fields={"loss": float("nan")}, fmt="loss {task.fields[loss]:.3f}") as bar:
        bar.update(completed=4, loss=0.25)
    assert bar.completed == 4


def test_import_is_light():
    code = "import malm.progress, sys; assert 'rich' not in sys.modules, 'rich imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
