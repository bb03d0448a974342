"""Bad recipe records (index JSONL, Recipe1M training data): per-record errors with counts; one bad record
never aborts a build unless `--strict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _recipe1m_fixture import make_recipe1m
from _sdk_bundle import make_bundle
from typer.testing import CliRunner

from malm.cli import app
from malm.edge_index.records import MAX_TEXT_CHARS, ReadReport, dedupe, iter_jsonl
from malm.errors import MalmError
from malm.recipe1m import load_recipe1m
from malm.sdk import Retriever


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


GOOD = [
    _j({"id": "ok1", "title": "Tomato soup", "ingredients": ["2 tomatoes"], "instructions": ["Boil."]}),
    _j({"id": "ok2", "title": "odd unicode: \u202e rtl, \u200d zwj, \U0001F600, nul \x00, e\u0301", "ingredients": ["rice"]}),
    _j({"id": "ok3", "title": "long but fine " + "x" * 50_000, "instructions": ["y" * 20_000]}),
    _j({"id": 42, "title": "numeric id"}),
    _j({"id": "ok5", "title": "recipe1m shape", "ingredients": [{"text": "egg"}], "instructions": [{"text": "fry"}]}),
    _j({"id": "ok6", "title": "", "ingredients": ["only ingredients"], "instructions": []}),
]
BAD = {
    "not_utf8": b'{"id": "b1", "title": "caf\xe9 in latin-1"}',
    "bad_unicode": _j({"id": "b2", "title": "lone \ud800 surrogate"}),
    "too_long": _j({"id": "b3", "title": "x" * (MAX_TEXT_CHARS + 1)}),
    "duplicate_id": _j({"id": "ok1", "title": "again"}),
    "empty": _j({"id": "b5", "title": " ", "ingredients": [], "instructions": []}),
    "missing_id": _j({"title": "no id"}),
    "bad_ingredients": _j({"id": "b7", "title": "t", "ingredients": "a string"}),
    "bad_instructions": _j({"id": "b8", "title": "t", "instructions": [None]}),
    "bad_title": b'{"id": "b9", "title": NaN}',
    "not_an_object": b"[1, 2]",
    "invalid_json": b'{"id": "b11", "title": ',
    "bad_tags": _j({"id": "b12", "title": "t", "tags": {"a": 1}}),
}
DEEP = b"[" * 100_000  # nested too deeply for the JSON parser: one more invalid_json


def _write(path: Path) -> Path:
    lines = GOOD[:2] + list(BAD.values())[:6] + GOOD[2:] + list(BAD.values())[6:] + [DEEP, b"", b"   "]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_counts_every_bad_record_and_keeps_the_good(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl")
    report = ReadReport()
    records = list(dedupe(iter_jsonl(path, report), report))
    assert [r.id for r in records] == ["ok1", "ok2", "ok3", "42", "ok5", "ok6"]
    expected = {reason: 1 for reason in BAD}
    expected["invalid_json"] += 1  # DEEP
    assert dict(report.skipped) == expected
    assert report.read == len(GOOD)
    assert "\u202e" in records[1].title and "\x00" in records[1].title  # odd but valid text is kept as is


def test_strict_stops_at_the_first_bad_record_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl")
    with pytest.raises(MalmError, match=r"r\.jsonl:3: not_utf8"):
        list(iter_jsonl(path, ReadReport(), strict=True))


def test_first_line_bom_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD[0] + b"\n")
    assert [r.id for r in iter_jsonl(path, ReadReport())] == ["ok1"]
    with pytest.raises(MalmError, match="is a directory"):
        list(iter_jsonl(tmp_path, ReadReport()))
    with pytest.raises(MalmError, match="cannot be read"):
        list(iter_jsonl(tmp_path / "nope.jsonl", ReadReport()))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("rr") / "bundle", 10, with_recipe_encoder=True)


def test_index_add_skips_bad_records_with_counts_and_strict_refuses(bundle: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl")
    res = CliRunner().invoke(app, ["index", "add", "--bundle", str(bundle), "--recipes", str(path), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["indexed"] == len(GOOD) and report["count"] == 10 + len(GOOD)
    assert report["skipped"]["not_utf8"] == 1 and report["skipped"]["duplicate_id"] == 1
    r = Retriever.load(bundle)
    assert len(r) == 10 + len(GOOD)
    hits = r.search(_photo(), k=len(r))
    assert {h.recipe_id for h in hits} >= {"ok1", "ok2", "ok3", "42"}
    # --strict: refused at the first bad record, and nothing of the file is added.
    res = CliRunner().invoke(app, ["index", "add", "--bundle", str(bundle), "--recipes", str(path), "--strict"])
    assert res.exit_code != 0 and "r.jsonl:3" in str(res.exception or res.output)
    assert len(Retriever.load(bundle)) == 10 + len(GOOD)


def _photo() -> bytes:
    import io

    from _sdk_bundle import photo

    buf = io.BytesIO()
    photo(1).save(buf, "PNG")
    return buf.getvalue()


def test_sdk_add_recipes_names_the_bad_record(bundle: Path) -> None:
    r = Retriever.load(bundle)
    with pytest.raises(MalmError, match=r"recipe #1: (bad_unicode|missing_id)"):
        r.add_recipes([{"id": "fine", "title": "fine"}, {"id": "bad", "title": "\ud800"}])


def test_recipe1m_training_data_skips_bad_records_with_counts(tmp_path: Path) -> None:
    root = make_recipe1m(tmp_path / "r1m")
    layer1 = json.loads((root / "layer1.json").read_text())
    extra = [
        {"id": "s1", "partition": "train", "title": "lone \ud800", "ingredients": [{"text": "x"}],
         "instructions": [{"text": "y"}]},
        {"id": "h1", "partition": "train", "title": "huge " * 20_000, "ingredients": [{"text": "x" * 30_000}],
         "instructions": [{"text": "y"}]},
        {"id": "e1", "partition": "train", "title": "no steps", "ingredients": [{"text": "x"}], "instructions": []},
        {"id": "m1", "partition": "val"},
        {"id": "u1", "partition": "test", "title": "caf\u00e9 \u202e \U0001F600", "ingredients": [{"text": "x"}],
         "instructions": [{"text": "y"}]},
    ]
    (root / "layer1.json").write_text(json.dumps(layer1 + extra))
    data = load_recipe1m(root)
    ids = {r.id for r in data.recipes}
    assert {"h1", "u1"} <= ids and not {"s1", "e1", "m1"} & ids
    skipped = data.stats.skipped
    assert skipped["bad_unicode"] == 1 and skipped["instructions_empty"] >= 1 and skipped["duplicate_id"] == 1
    assert sum(skipped.values()) == 6 + 3  # the fixture's 6 bad records and 3 of ours
    with pytest.raises(MalmError, match="layer1.json"):
        load_recipe1m(root, strict=True)
    # A file that is not UTF-8 at all is refused as a whole, naming it.
    (root / "layer1.json").write_bytes(b'[{"id": "x", "title": "caf\xe9"}]')
    with pytest.raises(MalmError, match="layer1.json: not UTF-8"):
        load_recipe1m(root)
