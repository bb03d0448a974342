"""The renderer's drawn-ingredients log and the ingredient oracle built on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from malm.errors import MalmError
from malm.training.synth import generate
from malm.training.synth.ingredients import INGREDIENTS
from malm.training.synth.oracle import IngredientOracle, metrics_with_ties, rank_stats, split_pairs
from malm.training.synth.render import PhotoSpec, render, render_logged
from malm.training.synth.writer import DRAWN_LOG, write_drawn_log


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "synth"
    generate(out, recipes=120, seed=3, image_size=48, workers=1)
    return out


def test_render_logged_draws_the_same_photo_and_names_what_it_drew() -> None:
    invisible = next(n for n, i in INGREDIENTS.items() if i.shape == "none")
    spec = PhotoSpec("soup", "bowl", "heavy cream", None, (("cherry tomatoes", 1.0), (invisible, 1.0)), 7, 64, "")
    img, drawn = render_logged(spec)
    assert np.array_equal(np.asarray(img), np.asarray(render(spec)))  # logging changes no random draw
    assert drawn == ("cherry tomatoes", "heavy cream")  # the soup's fill and the pieces; not the invisible one


def test_generate_writes_the_log_for_every_photo_and_an_old_benchmark_gets_the_same(bench: Path, tmp_path: Path) -> None:
    log = json.loads((bench / DRAWN_LOG).read_text())
    photos = {im["id"] for r in json.loads((bench / "layer2.json").read_text()) for im in r["images"]}
    assert set(log["photos"]) == photos and log["version"] == 1
    assert all(v and v == sorted(v) for v in log["photos"].values())
    assert all(n in INGREDIENTS for v in log["photos"].values() for n in v)
    # a benchmark from before the log: the Recipe1M files only; write_drawn_log redraws its test photos
    old = tmp_path / "old"
    shutil.copytree(bench, old)
    (old / DRAWN_LOG).unlink()
    with pytest.raises(MalmError, match="--write-log"):
        IngredientOracle.load(old)
    write_drawn_log(old, partitions=["test"], workers=1)
    rebuilt = json.loads((old / DRAWN_LOG).read_text())
    assert rebuilt["partitions"] == ["test"] and rebuilt["photos"]
    assert all(log["photos"][k] == v for k, v in rebuilt["photos"].items())


def test_write_drawn_log_refuses_data_it_did_not_generate(tmp_path: Path) -> None:
    (tmp_path / "layer1.json").write_text("[]")
    with pytest.raises(MalmError, match="malm data synth"):
        write_drawn_log(tmp_path)


def test_tie_rules_on_a_hand_computed_example() -> None:
    # query 0: true 0.5, one other higher, one tied -> greater 1, tied 1; query 1: alone on top; query 2: 3-way tie
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [0.0, 1.0, 0.2, 0.3], [0.4, 0.4, 0.4, 0.1], [0.0, 0.0, 0.0, 0.0]])
    greater, tied = rank_stats(scores)
    assert greater.tolist() == [1, 0, 0, 0] and tied.tolist() == [1, 0, 2, 3]
    assert metrics_with_ties(greater, tied, "optimistic")["R@1"] == pytest.approx(75.0)
    assert metrics_with_ties(greater, tied, "pessimistic")["R@1"] == pytest.approx(25.0)
    # expected: P(rank 1) = 0, 1, 1/3, 1/4
    assert metrics_with_ties(greater, tied, "expected")["R@1"] == pytest.approx(100 * (1 + 1 / 3 + 1 / 4) / 4)
    assert metrics_with_ties(greater, tied, "expected")["R@5"] == pytest.approx(100.0)
    with pytest.raises(MalmError, match="tie rule"):
        metrics_with_ties(greater, tied, "random")


def test_oracle_follows_evaluate_pairs_and_bounds_itself(bench: Path) -> None:
    oracle = IngredientOracle.load(bench)
    pairs = split_pairs(bench, "test", oracle.drawn)
    layer1 = json.loads((bench / "layer1.json").read_text())
    with_photo = {r["id"] for r in json.loads((bench / "layer2.json").read_text()) if r["images"]}
    assert [p.recipe_id for p in pairs] == [r["id"] for r in layer1 if r["partition"] == "test" and r["id"] in with_photo]
    res = oracle.evaluate("test", size=None)
    assert res["size"] == res["pairs"] == len(pairs) and res["subsets"] == 1
    assert res["pessimistic"]["R@1"] <= res["expected"]["R@1"] <= res["optimistic"]["R@1"]
    assert res["expected"]["R@1"] > 60  # the drawn ingredients identify most recipes; near-duplicates tie
    smaller = oracle.evaluate("test", size=len(pairs) - 2, seed=1)
    assert smaller["subsets"] == 10


def test_oracle_module_needs_no_torch() -> None:
    code = "import sys, malm.training.synth.oracle; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_reports_the_ceiling_and_its_fraction(bench: Path, tmp_path: Path) -> None:
    from malm.demo import oracle_ceiling
    from malm.demo_report import render_report

    evaluation = {"im2recipe": {"20": {"R@1": 30.0}}}
    oracle = oracle_ceiling(bench, evaluation)
    ceiling = IngredientOracle.load(bench).evaluate("test", size=None)["expected"]["R@1"]
    assert oracle["R@1"] == round(ceiling, 1) and oracle["fraction"] == round(30.0 / ceiling, 3)
    page = render_report({"oracle": oracle, "queries": []}, [])
    assert "id='oracle'" in page and f"{100 * 30.0 / ceiling:.0f}%" in page
    # data from before the log: a note, no ceiling, and the report leaves the line out
    old = tmp_path / "old"
    shutil.copytree(bench, old)
    (old / DRAWN_LOG).unlink()
    note = oracle_ceiling(old, evaluation)
    assert "--write-log" in note["note"] and "id='oracle'" not in render_report({"oracle": note, "queries": []}, [])


def test_oracle_benchmark_writes_json_and_markdown(bench: Path, tmp_path: Path) -> None:
    from benchmarks.oracle import main

    assert main([str(bench), "--size", "0", "--name", "t", "--results-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "oracle_t.json").read_text())
    assert res["size"] == res["pairs"] and res["machine"] and "expected (the ceiling)" in (tmp_path / "oracle_t.md").read_text()
