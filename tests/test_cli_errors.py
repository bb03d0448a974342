"""What a user sees when malm itself fails: one line, where the traceback went, never the traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import malm.cli as cli


def _boom(*args: object, **kwargs: object) -> None:
    raise ZeroDivisionError("a bug deep inside")


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["malm", *argv])
    monkeypatch.setattr(cli, "app", _boom)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0)


def test_unexpected_error_is_one_line_and_a_traceback_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MALM_DEBUG", raising=False)
    assert _run(["export", "--target", "coreml"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: malm export failed unexpectedly: ZeroDivisionError: a bug deep inside")
    (crash,) = (tmp_path / "crashes").iterdir()
    assert str(crash) in err
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and "a bug deep inside" in text and "_boom" in text


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path))
    argv = ["index", "build", "--debug"] if how == "flag" else ["index", "build"]
    if how == "env":
        monkeypatch.setenv("MALM_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["malm", *argv])
    seen: list[object] = []

    def boom(*args: object, **kwargs: object) -> None:
        seen.append(kwargs.get("args"))
        raise ZeroDivisionError("shown")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(ZeroDivisionError, match="shown"):
        cli.main()
    assert seen == [["index", "build"]]  # --debug is ours, not passed to the command
    assert not (tmp_path / "crashes").exists()


def test_user_errors_stay_exit_2_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["malm", "query", str(tmp_path / "missing.jpg"), "--bundle",
                                      str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "crashes").exists()
