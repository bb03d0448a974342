"""The prepared cache (reuse, invalidation, atomicity, content) and the torch datasets over it."""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections import Counter

import numpy as np
import pytest

from malm.errors import ImageError, MalmError
from malm.preprocess import PreprocessConfig, preprocess
from malm.text import TextLimits, Vocabulary, encode_recipe, recipe_tokens
from malm.training.data import load_recipe1m, open_prepared, prepare

SMALL = PreprocessConfig(size=16, resize=20)


@pytest.fixture
def data_dir(tmp_path, make_recipe1m):
    return make_recipe1m(tmp_path / "r1m")


def test_prepare_content_matches_reader_and_encode_recipe(data_dir, monkeypatch) -> None:
    prep = importlib.import_module("malm.training.data.prepare")  # the package re-exports a function of this name

    monkeypatch.setattr(prep, "_BLOCK", 2)  # train's 3 recipes cross an encoding block boundary
    logs: list[str] = []
    prepared = prepare(data_dir, min_freq=1, log=logs.append)
    assert not prepared.reused and prepared.cache_dir == data_dir / ".malm_cache"
    assert any("preparing" in m for m in logs)
    raw = load_recipe1m(data_dir)
    train = [r for r in raw.recipes if r.partition == "train"]
    # the vocabulary counts the training split only: "saffron" appears in test alone
    counts = Counter(t for r in train for t in recipe_tokens(r.title, r.ingredients, r.instructions))
    assert prepared.vocab == Vocabulary.build(counts, min_freq=1)
    assert "saffron" not in prepared.vocab and "tomato" in prepared.vocab
    assert prepared.stats.to_dict() == raw.stats.to_dict()

    for split in ("train", "val", "test"):
        sd = prepared.split(split)
        recipes = [r for r in raw.recipes if r.partition == split]
        assert sd.ids == [r.id for r in recipes] and len(sd) == len(recipes)
        assert sd.title.dtype == np.int32 and sd.ingredients.shape == (len(sd), 20, 15)
        assert isinstance(sd.title, np.memmap)
        for i, r in enumerate(recipes):
            expect = encode_recipe(r.title, r.ingredients, r.instructions, prepared.vocab, TextLimits())
            for k, v in expect.items():
                np.testing.assert_array_equal(getattr(sd, k)[i], v)
            assert sd.image_paths(i) == list(r.image_paths)
            rec = sd.recipe(i)
            assert (rec["id"], rec["title"], rec["url"]) == (r.id, r.title, r.url)
            assert rec["ingredients"] == list(r.ingredients) and rec["instructions"] == list(r.instructions)
            assert rec["det_ingredients"] == list(r.det_ingredients)
        assert sd.paired_indices().tolist() == [i for i, r in enumerate(recipes) if r.image_paths]
    assert prepared.split("test").recipe(1)["det_ingredients"] == []
    assert prepared.split("test").recipe(0)["det_ingredients"] == ["rice", "saffron"]
    with pytest.raises(MalmError, match="unknown split"):
        prepared.split("dev")
    # nothing but the cache and its lock are left next to it
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".")) == [".malm_cache", ".malm_cache.lock"]
    assert not list((data_dir / ".malm_cache").rglob("*.tmp*"))


def test_cache_reuse_and_invalidation(data_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = prepare(data_dir, cache_dir=cache, min_freq=1)
    stamp = (cache / "manifest.json").stat().st_mtime_ns
    again = prepare(data_dir, cache_dir=cache, min_freq=1)
    assert again.reused and (cache / "manifest.json").stat().st_mtime_ns == stamp
    assert again.vocab == first.vocab

    assert not prepare(data_dir, cache_dir=cache, min_freq=2).reused  # settings changed
    assert not prepare(data_dir, cache_dir=cache, min_freq=2, limits=TextLimits(max_tokens=10)).reused
    assert prepare(data_dir, cache_dir=cache, min_freq=2, limits=TextLimits(max_tokens=10)).reused
    assert prepare(data_dir, cache_dir=cache, min_freq=2, limits=TextLimits(max_tokens=10), force=True).reused is False

    layer1 = data_dir / "layer1.json"
    records = json.loads(layer1.read_text())
    records[0]["title"] = "Tomato Pasta Deluxe"
    layer1.write_text(json.dumps(records))
    os.utime(layer1, ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = prepare(data_dir, cache_dir=cache, min_freq=2, limits=TextLimits(max_tokens=10))
    assert not rebuilt.reused and rebuilt.split("train").recipe(0)["title"] == "Tomato Pasta Deluxe"
    (data_dir / "det_ingrs.json").unlink()  # an optional file disappearing also counts as a change
    assert not prepare(data_dir, cache_dir=cache, min_freq=2, limits=TextLimits(max_tokens=10)).reused
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cache.")] == [".cache.lock"]
    assert open_prepared(cache).vocab == rebuilt.vocab


def test_unwritable_cache_suggests_cache_option(data_dir, tmp_path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(MalmError, match=r"cannot write the data cache here \(Permission denied\); pass --cache"):
        prepare(data_dir, min_freq=1)
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(MalmError, match="cannot write the data cache"):
        prepare(data_dir, cache_dir=tmp_path / "file" / "cache", min_freq=1)


def test_refusals(tmp_path, data_dir) -> None:
    with pytest.raises(MalmError, match="data folder not found"):
        prepare(tmp_path / "nope")
    with pytest.raises(MalmError, match="min-freq"):
        prepare(data_dir, min_freq=0)
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    (only_test / "layer2.json").write_text("[]")
    (only_test / "layer1.json").write_text(json.dumps([{"id": "x", "title": "t", "partition": "test",
                                                        "ingredients": [{"text": "a"}], "instructions": [{"text": "b"}]}]))
    with pytest.raises(MalmError, match="no valid training recipes"):
        prepare(only_test)
    with pytest.raises(MalmError, match="no prepared data"):
        open_prepared(tmp_path / "empty")


def test_empty_split_and_text_only(tmp_path, make_recipe1m) -> None:
    root = make_recipe1m(tmp_path / "r1m")
    (root / "layer2.json").write_text("[]")
    prepared = prepare(root, min_freq=1)
    sd = prepared.split("val")
    assert len(sd) == 1 and sd.image_paths(0) == [] and sd.paired_indices().size == 0


torch = pytest.importorskip("torch", reason="the torch datasets need the [train] extra")


def test_image_dataset_items(data_dir) -> None:
    from malm.training.data import RecipeImageDataset, RecipeTextDataset

    prepared = prepare(data_dir, min_freq=1)
    ds = RecipeImageDataset(prepared, "train", SMALL, train=True)
    assert len(ds) == 2 and ds.indices.tolist() == [0, 1]  # r2 has no image
    item = ds[1]
    assert set(item) == {"image", "title", "ingredients", "instructions", "index"}
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["title"].shape == (20,) and item["title"].dtype == torch.int64
    assert item["ingredients"].shape == (20, 15) and item["instructions"].dtype == torch.int64
    assert item["index"].item() == 1 and item["index"].dtype == torch.int64

    evals = RecipeImageDataset(prepared, "train", SMALL, train=False)
    from PIL import Image

    first = prepared.split("train").image_paths(0)[0]
    np.testing.assert_array_equal(evals[0]["image"].numpy(), preprocess(Image.open(first), SMALL))

    text = RecipeTextDataset(prepared, "train")
    assert len(text) == 3 and "image" not in text[2] and text[2]["index"].item() == 2
    np.testing.assert_array_equal(text[2]["title"].numpy(), prepared.split("train").title[2])


def test_train_transform_deterministic_under_seed_and_random_without(data_dir) -> None:
    from malm.training.data import RecipeImageDataset

    ds = RecipeImageDataset(prepared := prepare(data_dir, min_freq=1), "train", SMALL, train=True)

    def epoch(seed: int) -> list[np.ndarray]:
        loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=0,
                                             generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        return [b["image"].numpy() for _ in range(3) for b in loader]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # random crops/flips/photos really vary across draws of the same recipe (r0 has two photos)
    torch.manual_seed(0)
    views = {ds[0]["image"].numpy().tobytes() for _ in range(12)}
    assert len(views) > 3
    assert prepared.split("train").image_paths(0)[1].name == "abce0002.jpg"


def test_unreadable_image_names_the_file(data_dir, make_recipe1m) -> None:
    from malm.training.data import RecipeImageDataset

    prepared = prepare(data_dir, min_freq=1)
    ds = RecipeImageDataset(prepared, "val", SMALL, train=False)
    path = prepared.split("val").image_paths(0)[0]
    path.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="cdef0005.jpg: cannot read image"):
        ds[0]
    path.unlink()
    with pytest.raises(ImageError, match="cdef0005.jpg: image file not found"):
        ds[0]
    make_recipe1m(data_dir)  # the image is back (40x30 pixels)
    assert ds[0]["image"].shape == (3, 16, 16)
    tight = RecipeImageDataset(prepared, "val", PreprocessConfig(size=16, resize=20, max_pixels=1000), train=False)
    with pytest.raises(ImageError, match="cdef0005.jpg: 40x30 image is above the 1000-pixel limit"):
        tight[0]
