"""The SQLite recipe store: round trip, ingredient filters, read-only opening leaves the file untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from malm.bundle import sha256_path
from malm.edge_index.records import RecipeRecord, ingredient_name, ingredient_names, singular
from malm.edge_index.store import RecipeStore
from malm.errors import BundleError, MalmError


def make(path: Path) -> RecipeStore:
    store = RecipeStore.create(path)
    store.insert([0, 1, 2, 5], [
        RecipeRecord("a", "Peanut Noodles", ("200 g noodles", "3 tbsp peanut butter", "1 lime, juiced"), ("boil",),
                     url="http://x/a", tags=("asian",)),
        RecipeRecord("b", "Tomato Salad", ("4 large tomatoes, sliced", "1/2 cup fresh basil (chopped)"), ("mix",)),
        RecipeRecord("c", "Peanuts", ("1 cup roasted peanuts",), ()),
        RecipeRecord("d", "Butter Cake", ("2 sticks butter", "2 cups flour"), ("bake", "cool")),
    ])
    return store


def test_round_trip(tmp_path: Path) -> None:
    store = make(tmp_path / "s.sqlite")
    assert store.count() == 4 and store.labels() == [0, 1, 2, 5] and store.ids() == {"a", "b", "c", "d"}
    got = store.get([5, 0, 99])
    assert set(got) == {0, 5}
    assert got[0] == RecipeRecord("a", "Peanut Noodles", ("200 g noodles", "3 tbsp peanut butter", "1 lime, juiced"),
                                  ("boil",), url="http://x/a", tags=("asian",))
    assert store.labels_for_ids(["d", "zz"]) == {"d": 5}
    assert store.names(1) == ["tomato", "basil"]
    store.delete([1])
    assert store.count() == 3 and store.labels_with_ingredient("tomato") == set()
    with pytest.raises(MalmError, match="duplicate"):
        store.insert([9], [RecipeRecord("a", "again", (), ("x",))])
    assert store.count() == 3  # the failed insert left nothing behind


def test_ingredient_filter(tmp_path: Path) -> None:
    store = make(tmp_path / "s.sqlite")
    assert store.labels_with_ingredient("peanut") == {0, 2}
    assert store.labels_with_ingredient("Peanuts") == {0, 2}  # plural and case do not matter
    assert store.labels_with_ingredient("peanut butter") == {0}  # a phrase must appear as such
    assert store.labels_with_ingredient("butter") == {0, 5}
    assert store.labels_with_ingredient("tomato") == {1}
    assert store.labels_with_ingredient("saffron") == set()
    with pytest.raises(MalmError, match="no words"):
        store.labels_with_ingredient("  12 ")


def test_ingredient_names() -> None:
    assert ingredient_name("2 cups chopped fresh tomatoes, peeled (optional)") == "tomato"
    assert ingredient_name("1 1/2 tbsp extra virgin olive oil") == "virgin olive oil"
    assert ingredient_names(["salt", "1 tsp salt", "2 eggs"]) == ["salt", "egg"]
    assert [singular(w) for w in ("berries", "tomatoes", "glass", "eggs", "hummus")] == [
        "berry", "tomato", "glass", "egg", "hummus"]


def test_read_only_open_does_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    make(path).close()
    before = sha256_path(path)
    with RecipeStore.open(path) as store:
        assert store.labels_with_ingredient("peanut") == {0, 2}
        with pytest.raises(sqlite3.OperationalError):
            store._conn.execute("DELETE FROM recipes")
    assert sha256_path(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]  # no journal / wal left beside it


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        RecipeStore.open(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BundleError, match="not a malm recipe store"):
        RecipeStore.open(tmp_path / "junk.sqlite")
    make(tmp_path / "s.sqlite").close()
    with pytest.raises(MalmError, match="already exists"):
        RecipeStore.create(tmp_path / "s.sqlite")


def test_given_names_win_over_detection(tmp_path: Path) -> None:
    store = RecipeStore.create(tmp_path / "s.sqlite")
    store.insert([0], [RecipeRecord("a", "Pad Thai", ("1 pkg rice noodles", "a handful of crushed nuts"), ("fry",),
                                    names=("rice noodles", "Peanuts"))])
    assert store.names(0) == ["rice noodle", "peanut"]
    assert store.labels_with_ingredient("peanut") == {0} and store.labels_with_ingredient("nut") == set()
