"""`malm query` through the real command line (a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_bundle import make_bundle, save_photos


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Path]:
    root = tmp_path_factory.mktemp("q")
    bundle = make_bundle(root / "bundle", 30)
    photos = save_photos(root / "photos", range(4))
    bad = root / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return bundle, photos, bad


def malm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MALM_BUNDLE": "", **(env or {})}
    if not full_env["MALM_BUNDLE"]:
        del full_env["MALM_BUNDLE"]
    return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


def test_json_shape_and_a_bad_photo(setup: tuple[Path, list[Path], Path]) -> None:
    bundle, photos, bad = setup
    p = malm("query", str(photos[0]), str(bad), str(photos[2]), "--bundle", str(bundle), "-k", "3", "--json")
    assert p.returncode == 1, p.stderr  # one photo failed; the others are still answered
    assert "Traceback" not in p.stderr
    out = json.loads(p.stdout)
    assert [r["photo"] for r in out["results"]] == [str(photos[0]), str(bad), str(photos[2])]
    first, broken, third = out["results"]
    assert first["error"] is None and third["error"] is None
    assert [h["rank"] for h in first["hits"]] == [1, 2, 3]
    assert set(first["hits"][0]) == {"rank", "recipe_id", "title", "score", "ingredients", "url"}
    assert first["hits"][0]["recipe_id"] == "rec0000" and third["hits"][0]["recipe_id"] == "rec0002"
    assert isinstance(first["hits"][0]["ingredients"], list) and isinstance(first["hits"][0]["score"], float)
    assert broken["hits"] == [] and "broken.jpg" in broken["error"]


def test_folder_env_bundle_and_filters(setup: tuple[Path, list[Path], Path]) -> None:
    bundle, photos, _ = setup
    p = malm("query", str(photos[0].parent), "--json", "-k", "30", "--exclude-ingredient", "peanut",
             "--exclude-ingredient", "egg", "--rerank", env={"MALM_BUNDLE": str(bundle)})
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)["results"]
    assert [r["photo"] for r in results] == [str(x) for x in photos]
    for r in results:
        text = " ".join(" ".join(h["ingredients"]) for h in r["hits"])
        assert "peanut" not in text and "egg" not in text and r["hits"]


def test_table_output(setup: tuple[Path, list[Path], Path]) -> None:
    bundle, photos, _ = setup
    p = malm("query", str(photos[1]), "--bundle", str(bundle), "-k", "2")
    assert p.returncode == 0, p.stderr
    assert "Dish number 1" in p.stdout and "rank" in p.stdout and "main ingredients" in p.stdout


def test_user_errors_are_one_line(setup: tuple[Path, list[Path], Path], tmp_path: Path) -> None:
    _, photos, _ = setup
    p = malm("query", str(photos[0]), "--bundle", str(tmp_path / "nope"))
    assert p.returncode == 2 and p.stderr.startswith("error: bundle") and "Traceback" not in p.stderr
    p = malm("query", str(photos[0]))
    assert p.returncode == 2 and "--bundle" in p.stderr and "Traceback" not in p.stderr
    p = malm("query", str(photos[0]), "--bundle", str(setup[0]), "--rerank", "--variant", "int8")
    assert p.returncode == 2 and "has no int8 image encoder" in p.stderr and "Traceback" not in p.stderr


def test_index_add_and_remove_on_device_without_checkpoint(tmp_path: Path) -> None:
    """`malm index add` with no --checkpoint encodes with the bundle's ONNX recipe encoder (no torch)."""
    from typer.testing import CliRunner

    from malm.cli import app

    bundle = make_bundle(tmp_path / "b", 10, with_recipe_encoder=True)
    recipes = tmp_path / "new.jsonl"
    recipes.write_text(json.dumps({"id": "n1", "title": "tomato soup", "ingredients": ["2 cup tomato"],
                                   "instructions": ["cook"]}) + "\n")
    r = CliRunner().invoke(app, ["index", "add", "--bundle", str(bundle), "--recipes", str(recipes), "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["count"] == 11
    r = CliRunner().invoke(app, ["index", "remove", "--bundle", str(bundle), "--ids", "n1", "rec0003", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == 2
    from malm.sdk import Retriever

    assert len(Retriever.load(bundle)) == 9
