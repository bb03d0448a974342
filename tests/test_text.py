"""Cleaning, tokenizer, vocabulary and fixed-shape encoding (malm.text)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from malm.errors import MalmError
from malm.text import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    TextLimits,
    Vocabulary,
    clean_ingredient,
    clean_text,
    encode_recipe,
    recipe_tokens,
    tokenize,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1½ cups Flour &amp; Sugar", "1 1/2 cups flour & sugar"),
        ("½ cup milk", "1/2 cup milk"),
        ("crème brûlée &amp;amp; co", "crème brûlée & co"),  # doubly escaped in the scrape
        ("1 / 2  tsp\tsalt ", "1/2 tsp salt"),
        ("3⁄4 cup", "3/4 cup"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_broken_fractions_repaired_in_ingredients_only_where_a_quantity_starts() -> None:
    assert clean_ingredient("12 cup milk") == "1/2 cup milk"
    assert clean_ingredient("34 teaspoon salt, 14 cup water") == "3/4 teaspoon salt, 1/4 cup water"
    assert clean_ingredient("112 g butter") == "112 g butter"  # H-T's substring replace would break this
    assert clean_ingredient("1 12 cups") == "1 1/2 cups"
    assert clean_text("bake 12 minutes") == "bake 12 minutes"  # instructions untouched


def test_tokenize_keeps_quantities_and_words_whole() -> None:
    assert tokenize(clean_ingredient("2¼ lb. chicken-breasts (3.5 oz), don't stir!")) == [
        "2", "1/4", "lb", ".", "chicken-breasts", "(", "3.5", "oz", ")", ",", "don't", "stir", "!"]  # fmt: skip
    assert tokenize("") == []


def test_vocabulary_build_order_min_freq_and_specials() -> None:
    vocab = Vocabulary.build(Counter({"b": 3, "a": 3, "c": 1, "d": 5}), min_freq=2)
    assert vocab.words == ["<pad>", "<start>", "<end>", "<unk>", "d", "a", "b"]
    assert (vocab.id("<pad>"), vocab.id("<start>"), vocab.id("<end>"), vocab.id("<unk>")) == (0, 1, 2, 3)
    assert vocab.id("c") == UNK_ID and vocab.id("never") == UNK_ID
    assert vocab.decode([START_ID, 4, 5, 99, END_ID, 6]) == ["d", "a", "<unk>"]
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.build(Counter(), min_freq=0)


def test_vocabulary_json_round_trip_and_refusals(tmp_path) -> None:
    vocab = Vocabulary.build(Counter(recipe_tokens("Tomato Soup", ["2 tomatoes"], ["Boil them."])))
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.min_freq == 1
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left behind
    with pytest.raises(MalmError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MalmError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")
    (tmp_path / "wrong.json").write_text(json.dumps({"words": ["a", "b"]}))
    with pytest.raises(MalmError, match="must start with"):
        Vocabulary.load(tmp_path / "wrong.json")


def test_text_limits_validate() -> None:
    assert TextLimits() == TextLimits(20, 20, 20, 15)
    assert TextLimits.from_dict(TextLimits(5, 3, 4, 6).to_dict()) == TextLimits(5, 3, 4, 6)
    with pytest.raises(ValueError, match="max_tokens"):
        TextLimits(max_tokens=2)
    with pytest.raises(ValueError, match="max_ingredients"):
        TextLimits(max_ingredients=0)


def test_encode_recipe_shapes_and_layout() -> None:
    vocab = Vocabulary(["tomato", "soup", "boil", "water", "1/2", "cup"])
    ids = {w: vocab.id(w) for w in vocab.words}
    out = encode_recipe("Tomato Soup", ["12 cup water", "  ", "tomato"], ["Boil water"], vocab)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "title": ((20,), np.int32), "ingredients": ((20, 15), np.int32), "instructions": ((20, 15), np.int32)}
    assert out["title"][:4].tolist() == [START_ID, ids["tomato"], ids["soup"], END_ID]
    assert not out["title"][4:].any()
    # the blank line is dropped, so rows stay contiguous; "12 cup" became "1/2 cup"
    assert out["ingredients"][0, :5].tolist() == [START_ID, ids["1/2"], ids["cup"], ids["water"], END_ID]
    assert out["ingredients"][1, :3].tolist() == [START_ID, ids["tomato"], END_ID]
    assert (out["ingredients"][2:] == PAD_ID).all()
    assert out["instructions"][0, :4].tolist() == [START_ID, ids["boil"], ids["water"], END_ID]


def test_encode_recipe_truncates() -> None:
    vocab = Vocabulary(["w"])
    limits = TextLimits(max_title_tokens=4, max_ingredients=2, max_instructions=1, max_tokens=3)
    out = encode_recipe("w w w w w", ["w w", "w", "w"], ["w", "w"], vocab, limits)
    w = vocab.id("w")
    assert out["title"].tolist() == [START_ID, w, w, END_ID]
    assert out["ingredients"].tolist() == [[START_ID, w, END_ID], [START_ID, w, END_ID]]
    assert out["instructions"].shape == (1, 3)
    assert encode_recipe("unknown", ["x"], ["y"], vocab, limits)["title"].tolist() == [START_ID, UNK_ID, END_ID, PAD_ID]
