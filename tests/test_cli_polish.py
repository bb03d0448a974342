"""The command line's manners: --version, -h, --json everywhere (errors too), one list style, choices, literal help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import malm
from malm.cli import app, command_name
from malm.commands._options import split_ints, split_list
from malm.errors import MalmError

ROOT = get_command(app)


def leaves(cmd: Any = ROOT, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    children = getattr(cmd, "commands", None)
    if isinstance(children, dict):
        for name, child in children.items():
            yield from leaves(child, (*path, name))
    else:
        yield path, cmd


def run_malm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MALM_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_version() -> None:
    p = run_malm("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"malm {malm.__version__}"


def test_short_help_on_every_command() -> None:
    runner = CliRunner()
    for path, _ in leaves():
        r = runner.invoke(app, [*path, "-h"])
        assert r.exit_code == 0, (path, r.output)
        assert "usage" in r.output.lower(), path
    assert "Usage" in runner.invoke(app, ["-h"]).output


def test_every_command_has_json() -> None:
    missing = [" ".join(path) for path, cmd in leaves() if not any("--json" in getattr(p, "opts", ()) for p in cmd.params)]
    assert not missing, f"commands without --json: {missing}"


def test_help_text_is_literal_not_rich_markup() -> None:
    out = CliRunner().invoke(app, ["data", "prepare", "-h"], env={"COLUMNS": "200"}).output
    assert "[det_ingrs.json]" in out
    out = CliRunner().invoke(app, ["export", "-h"], env={"COLUMNS": "200"}).output
    assert "[default: 500]" in out  # written in the help text itself


def test_json_error_object_on_stdout(tmp_path) -> None:
    missing = tmp_path / "nope"
    p = run_malm("index", "add", "--bundle", str(missing), "--recipes", str(tmp_path / "r.jsonl"), "--json")
    assert p.returncode == 2
    err = json.loads(p.stdout)
    assert err["command"] == "index add" and str(missing) in err["error"] and err["exit_code"] == 2
    assert "Traceback" not in p.stderr and "error:" in p.stderr
    # A usage error (bad choice) is an error object too, with click's own exit status.
    p = run_malm("eval", "--protocol", "nope", "--json")
    assert p.returncode == 2 and json.loads(p.stdout)["command"] == "eval"
    assert "nope" in json.loads(p.stdout)["error"]
    # Without --json stdout stays empty.
    p = run_malm("eval", "--protocol", "nope")
    assert p.returncode == 2 and p.stdout == ""


def test_command_name() -> None:
    assert command_name(["index", "add", "--bundle", "x"]) == "index add"
    assert command_name(["query", "photo.jpg"]) == "query"
    assert command_name(["--json"]) == ""


def test_list_style() -> None:
    assert split_list(["a", "b,c", " d , ", ""]) == ["a", "b", "c", "d"]
    assert split_list(None) == []
    assert split_ints(["1000", "10_000,2"], "--size") == [1000, 10000, 2]
    with pytest.raises(MalmError, match="--size"):
        split_ints(["ten"], "--size")
    # `index remove --ids A B` keeps working without a stray positional in the usage line.
    usage = CliRunner().invoke(app, ["index", "remove", "-h"], env={"COLUMNS": "200"}).output
    assert "[more]" not in usage.lower() and "MORE" not in usage


def test_unexpected_error_with_json_is_an_error_object(tmp_path, monkeypatch, capsys) -> None:
    import malm.cli as cli

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MALM_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["malm", "index", "build", "--json"])
    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out == {"error": "malm index build failed unexpectedly: ZeroDivisionError: a bug",
                   "command": "index build", "exit_code": 1}
