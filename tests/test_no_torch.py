"""The on-device runtime never imports torch (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_sdk_and_index_import_no_torch() -> None:
    p = run("import sys, malm.sdk, malm.edge_index; from malm import Retriever, Hit; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    assert p.returncode == 0, p.stderr


def test_query_command_path_imports_no_torch() -> None:
    # `malm query --help` builds the whole CLI, then the query command's own imports are made, as a run would.
    code = ("import sys; from typer.testing import CliRunner; from malm.cli import app; "
            "r = CliRunner().invoke(app, ['query', '--help']); assert r.exit_code == 0, r.output; "
            "import malm.commands.query, malm.sdk.retriever, malm.sdk.recipe_encoder; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    p = run(code)
    assert p.returncode == 0, p.stderr
