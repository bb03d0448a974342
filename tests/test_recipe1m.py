"""The Recipe1M reader on a tiny hand-made folder in the real layout."""

from __future__ import annotations

import json
import shutil

import pytest

from malm.errors import MalmError
from malm.recipe1m import ReadStats, iter_json_array, load_recipe1m


def image_path(images, partition: str, image_id: str):  # type: ignore[no-untyped-def]
    """Recipe1M's layout: images/<partition>/<first four characters, one folder each>/<id>."""
    return images.joinpath(partition, *image_id[:4], image_id)


def test_reads_valid_recipes_and_counts(tmp_path, make_recipe1m) -> None:
    data = load_recipe1m(make_recipe1m(tmp_path / "r1m"))
    assert [r.id for r in data.recipes] == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert data.images_dir == tmp_path / "r1m" / "images"
    s = data.stats
    assert s.recipes == {"train": 3, "val": 1, "test": 2}
    assert s.paired == {"train": 2, "val": 1, "test": 1}
    assert s.images_present == {"train": 3, "val": 1, "test": 1}
    assert s.images_missing == {"train": 1, "val": 0, "test": 1}
    assert dict(s.skipped) == {"bad_title": 1, "ingredients_empty": 1, "instructions_bad_item": 1,
                               "duplicate_id": 1, "bad_partition": 1, "not_object": 1}
    assert dict(s.layer2_skipped) == {"unknown_recipe_id": 1}
    assert "listed but missing" in s.summary() and "duplicate_id=1" in s.summary()
    assert ReadStats.from_dict(json.loads(json.dumps(s.to_dict()))).to_dict() == s.to_dict()

    r0 = data.recipes[0]
    assert r0.title == "Tomato Pasta" and r0.partition == "train" and r0.url == "http://example.com/r0"
    assert r0.ingredients == ("1 1/2 cups tomato", "12 cup olive oil", "pasta")  # raw text, cleaned later
    assert r0.instructions == ("Boil the pasta.", "Add tomato and oil.")
    assert r0.image_paths == (image_path(data.images_dir, "train", "abcd0001.jpg"),
                              image_path(data.images_dir, "train", "abce0002.jpg"))
    assert all(p.is_file() for p in r0.image_paths)
    assert r0.det_ingredients == ("tomato", "olive oil")  # only the valid ones
    assert [r.det_ingredients for r in data.recipes[1:]] == [(), (), (), ("rice", "saffron"), ()]
    assert data.recipes[1].image_paths == (image_path(data.images_dir, "train", "bcde0003.jpg"),)  # one missing
    assert data.recipes[5].image_paths == ()  # listed, not on disk → text only


def test_images_directly_under_data_dir_and_override(tmp_path, make_recipe1m) -> None:
    flat = make_recipe1m(tmp_path / "flat", images_subdir=None)
    data = load_recipe1m(flat)
    assert data.images_dir == flat and data.stats.paired == {"train": 2, "val": 1, "test": 1}

    elsewhere = make_recipe1m(tmp_path / "a", images_subdir="pics")
    assert load_recipe1m(elsewhere).stats.paired == {"train": 0, "val": 0, "test": 0}  # looked in DATA_DIR
    data = load_recipe1m(elsewhere, images_dir=elsewhere / "pics")
    assert data.stats.paired == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(MalmError, match="nowhere: images folder not found"):
        load_recipe1m(elsewhere, images_dir=tmp_path / "nowhere")


def test_strict_raises_on_first_malformed_record(tmp_path, make_recipe1m) -> None:
    root = make_recipe1m(tmp_path / "r1m")
    with pytest.raises(MalmError, match=r"layer1.json: malformed record \(bad_title\)"):
        load_recipe1m(root, strict=True)
    clean = make_recipe1m(tmp_path / "clean", bad=False)
    assert len(load_recipe1m(clean, strict=True).recipes) == 6


def test_optional_files_and_missing_layer1(tmp_path, make_recipe1m) -> None:
    root = make_recipe1m(tmp_path / "r1m", det=False)
    (root / "layer2.json").write_text("[]")  # text only
    data = load_recipe1m(root)
    assert len(data.recipes) == 6 and sum(data.stats.paired.values()) == 0 and not data.stats.has_det_ingrs
    (root / "layer2.json").unlink()
    with pytest.raises(MalmError, match=r"layer2.json: file not found .*\[\]"):
        load_recipe1m(root)
    (root / "layer2.json").write_text("[")
    with pytest.raises(MalmError, match="layer2.json: invalid JSON"):
        load_recipe1m(root)
    (root / "layer2.json").write_text("[]")
    (root / "det_ingrs.json").write_text("{}")
    with pytest.raises(MalmError, match="det_ingrs.json: not a JSON array"):
        load_recipe1m(root)
    (root / "layer1.json").unlink()
    with pytest.raises(MalmError, match="layer1.json: file not found"):
        load_recipe1m(root)
    with pytest.raises(MalmError, match="data folder not found"):
        load_recipe1m(tmp_path / "nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": 1}', "not a JSON array"),
        ('[{"id": "a"}, {"id": "b"', "truncated"),
        ('[{"id": "a"} {"id": "b"}]', "expected ','"),
        ('[{"id": "a"}] x', "extra data"),
        ('[{"id": "a", "t": tru}]', "invalid JSON"),
        ("", "not a JSON array"),
    ],
)
def test_invalid_json_names_the_file(tmp_path, text, message) -> None:
    (tmp_path / "layer1.json").write_text(text)
    (tmp_path / "layer2.json").write_text("[]")
    with pytest.raises(MalmError, match=message) as info:
        load_recipe1m(tmp_path)
    assert "layer1.json" in str(info.value)


def test_streaming_parser_matches_json_load_across_window_edges(tmp_path, monkeypatch) -> None:
    import malm.recipe1m as mod

    items = [{"id": f"id{i}", "title": "T" * (i % 7), "partition": "train", "url": f"http://example.com/id{i}",
              "ingredients": [{"text": "x" * i}], "instructions": [{"text": "y"}]} for i in range(60)]
    items += [12345, -1.5e3, True, None, "s", [], {}]  # scalars cut at a window edge must not decode short
    path = tmp_path / "a.json"
    path.write_text(" [ " + " ,\n".join(json.dumps(x) for x in items) + " ] \n")
    monkeypatch.setattr(mod, "_CHUNK", 7)  # windows far smaller than one item
    assert list(iter_json_array(path)) == items
    path.write_text("[]")
    assert list(iter_json_array(path)) == []


def test_missing_image_folder_is_counted_not_fatal(tmp_path, make_recipe1m) -> None:
    root = make_recipe1m(tmp_path / "r1m")
    shutil.rmtree(root / "images" / "val")
    data = load_recipe1m(root)
    assert data.stats.paired["val"] == 0 and data.stats.images_missing["val"] == 1
