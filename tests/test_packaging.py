"""Packaging: one version, a LICENSE, py.typed shipped, classifiers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import malm

tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib (these checks run on 3.11+)")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_source_of_the_version() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "malm._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", malm.__version__)
    # No other file spells the version out.
    for path in (ROOT / "malm").rglob("*.py"):
        if path != ROOT / "malm" / "_version.py":
            assert f'"{malm.__version__}"' not in path.read_text(), path


def test_license_and_typing_marker_ship() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "malm" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["malm"]
    assert "Typing :: Typed" in project["classifiers"]
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in project["classifiers"])
