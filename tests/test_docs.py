"""The user documentation is tested like code: README.md and docs/*.md.

- every ```python block runs (in a folder holding a small real bundle as `bundle/` and photos as
  `dish.jpg` / `photo.jpg`), unless an HTML comment `<!-- not run: REASON -->` right above it says why not
  (or `<!-- worked-example: ... -->`: tests/test_architecture.py builds those);
- every `malm ...` line in a ```bash block names commands and options the CLI really has;
- relative links in README.md point at files that exist (the docs site's own links are checked by
  `mkdocs build --strict` in `make test`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from _sdk_bundle import make_bundle, save_photos

from malm.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<before>[^\n]*\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
# `not run: REASON` says why in the page; `worked-example:` blocks are built by tests/test_architecture.py.
NOT_RUN = re.compile(r"<!--\s*(not run:\s*\S|worked-example:).*-->")


def blocks(lang: str) -> list[tuple[str, str, str]]:
    """(page, the line above the fence, body) for every fenced block of `lang`."""
    found = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text(encoding="utf-8")):
            if m["lang"] == lang:
                found.append((page.relative_to(ROOT).as_posix(), (m["before"] or "").strip(), m["body"]))
    return found


# A block marked `<!-- not run: REASON -->` in its page is left out here; the reason is in the page.
PYTHON = [b for b in blocks("python") if not NOT_RUN.search(b[1])]
BASH = blocks("bash")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    make_bundle(root / "bundle", n=24)
    photos = save_photos(root / "photos", range(2))
    (root / "dish.jpg").write_bytes(photos[0].read_bytes())
    (root / "photo.jpg").write_bytes(photos[1].read_bytes())
    return root


@pytest.mark.parametrize(("page", "above", "body"), PYTHON, ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(PYTHON)])
def test_python_blocks_run(page: str, above: str, body: str, workdir: Path) -> None:
    env = {**os.environ, "MALM_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", body], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{page}: the block fails:\n{body}\n{proc.stderr[-2000:]}"


def _resolve(words: list[str]) -> tuple[Any, list[str]]:
    """Walk `malm a b ...` down the command groups; returns the (click) command and the words after it."""
    command = typer.main.get_command(app)
    rest = list(words)
    # Groups have `.commands` (typer ships its own copy of click, so no isinstance against click's classes).
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def _options(command: Any) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


def malm_lines() -> list[tuple[str, str]]:
    lines = []
    for page, _, body in BASH:
        for text in body.splitlines():
            for line in text.split(" #", 1)[0].split("&&"):
                line = line.strip()
                if line.startswith("malm "):
                    lines.append((page, line))
                elif re.search(r"-m malm(\.cli)? ", line):
                    lines.append((page, "malm " + re.split(r"-m malm(?:\.cli)? ", line, maxsplit=1)[1]))
    return lines


MALM_LINES = malm_lines()


@pytest.mark.parametrize(("page", "line"), MALM_LINES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(MALM_LINES)])
def test_cli_lines_name_real_commands_and_options(page: str, line: str) -> None:
    # Placeholders like [--rerank] and a|b are documentation syntax: drop the brackets, keep the words.
    words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
    command, rest = _resolve(words)
    assert not hasattr(command, "commands") or not rest or rest[0].startswith("-"), \
        f"{page}: `{line}`: no command {rest[0]!r} under `{command.name}`"
    known = _options(command)
    for word in rest:
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            assert flag in known, f"{page}: `{line}`: `{command.name}` has no option {flag}"


def test_readme_links_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_there_is_something_to_check() -> None:
    assert PYTHON and MALM_LINES
