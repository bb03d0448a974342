"""The procedural food benchmark: Recipe1M layout, determinism, hard cases, photos."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from malm.errors import MalmError
from malm.training.synth import generate, generate_recipes, image_relpath
from malm.training.synth.dishes import DISHES
from malm.training.synth.ingredients import INGREDIENTS, visible
from malm.training.synth.render import PhotoSpec, render

HEX10 = re.compile(r"^[0-9a-f]{10}$")
IMAGE_ID = re.compile(r"^[0-9a-f]{10}\.jpg$")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bench"
    generate(out, recipes=80, seed=1, image_size=64, workers=1)
    return out


def test_layout_is_recipe1m(small: Path) -> None:
    layer1 = json.loads((small / "layer1.json").read_text())
    layer2 = json.loads((small / "layer2.json").read_text())
    det = json.loads((small / "det_ingrs.json").read_text())
    meta = json.loads((small / "synth.json").read_text())
    assert len(layer1) == len(det) == meta["recipes"] == 80
    ids = [r["id"] for r in layer1]
    assert len(set(ids)) == len(ids) and all(HEX10.match(i) for i in ids)
    for r in layer1:
        assert set(r) == {"id", "title", "ingredients", "instructions", "partition", "url"}
        assert r["partition"] in ("train", "val", "test")
        assert r["title"] and all(set(x) == {"text"} and x["text"] for x in r["ingredients"])
        assert 3 <= len(r["instructions"]) <= 12 and all(set(x) == {"text"} for x in r["instructions"])
    by_id = {r["id"]: r for r in layer1}
    for d in det:
        assert set(d) == {"id", "ingredients", "valid"}
        assert len(d["ingredients"]) == len(d["valid"]) == len(by_id[d["id"]]["ingredients"])
        assert all(isinstance(v, bool) for v in d["valid"])
    # detected ingredients are bare names (cherry tomatoes), not lines (2 cups cherry tomatoes, halved)
    valid_names = [x["text"] for d in det for x, v in zip(d["ingredients"], d["valid"], strict=True) if v]
    assert set(valid_names) <= set(INGREDIENTS)
    n_images = 0
    for entry in layer2:
        assert set(entry) == {"id", "images"} and entry["images"]
        part = by_id[entry["id"]]["partition"]
        for im in entry["images"]:
            assert set(im) == {"id", "url"} and IMAGE_ID.match(im["id"])
            path = small / "images" / part / im["id"][0] / im["id"][1] / im["id"][2] / im["id"][3] / im["id"]
            assert path.is_file() and str(path.relative_to(small)) == image_relpath(part, im["id"])
            n_images += 1
    assert n_images == meta["images"] == len(list((small / "images").rglob("*.jpg")))
    assert len(layer2) < len(layer1), "some recipes must have no photo (unpaired)"
    assert max(len(e["images"]) for e in layer2) <= 3
    assert sum(c["recipes"] for c in meta["partitions"].values()) == 80
    # nothing half-written is left behind
    assert not [p for p in small.rglob("*") if p.name.startswith(".")]


def test_photos_decode_at_requested_size(small: Path) -> None:
    paths = sorted((small / "images").rglob("*.jpg"))
    assert paths
    for p in paths[:40]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
            assert np.asarray(im).std() > 10  # a picture, not a flat colour


def test_same_seed_same_bytes_any_worker_count(tmp_path: Path, small: Path) -> None:
    again = tmp_path / "again"
    generate(again, recipes=80, seed=1, image_size=64, workers=2)  # pool path (>= 32 photos)
    assert _tree_hashes(again) == _tree_hashes(small)
    other = tmp_path / "other"
    generate(other, recipes=80, seed=2, image_size=64, workers=1)
    a, b = _tree_hashes(small), _tree_hashes(other)
    assert a["layer1.json"] != b["layer1.json"] and a["det_ingrs.json"] != b["det_ingrs.json"]
    assert not set(a.values()) & set(b.values())


def test_splits_photos_and_families() -> None:
    recipes = generate_recipes(3000, seed=0)
    parts = Counter(r.partition for r in recipes)
    assert abs(parts["train"] / 3000 - 0.70) < 0.06
    assert abs(parts["val"] / 3000 - 0.15) < 0.04 and abs(parts["test"] / 3000 - 0.15) < 0.04
    photos = Counter(len(r.image_ids) for r in recipes)
    assert set(photos) == {0, 1, 2, 3} and photos[1] + photos[2] > 0.6 * 3000
    assert len({r.dish for r in recipes}) == len(DISHES) >= 8
    # families: same dish and partition, one or two ingredients apart, similar titles
    families: dict[int, list] = defaultdict(list)
    for r in recipes:
        families[r.family].append(r)
    multi = [f for f in families.values() if len(f) > 1]
    assert len(multi) > 0.4 * len(families)
    close = 0
    for fam in multi:
        assert len({r.dish for r in fam}) == 1 and len({r.partition for r in fam}) == 1
        first = {fam[0].base, fam[0].sauce, *(n for n, _ in fam[0].items)}
        for r in fam[1:]:
            diff = first ^ {r.base, r.sauce, *(n for n, _ in r.items)}
            shared = set(fam[0].title.split()) & set(r.title.split())
            close += len(diff) <= 4 and bool(shared)
    assert close > 0.8 * sum(len(f) - 1 for f in multi)


def test_catalogue_and_long_tail() -> None:
    shown = [i for i in INGREDIENTS.values() if visible(i.name) and i.category != "sauce"]
    assert len(shown) >= 50
    for ing in shown:  # visible at 64 px: at least ~2.5 px per piece after the 128 -> 64 downscale
        assert ing.size >= 3 or ing.shape == "fill"
    recipes = generate_recipes(4000, seed=3)
    used = Counter(n for r in recipes for n, _ in r.items)
    rare = [n for n, c in used.items() if c < 0.005 * len(recipes)]
    common = [n for n, c in used.items() if c > 0.03 * len(recipes)]
    assert len(rare) >= 5 and len(common) >= 10


def test_text_reads_like_recipes() -> None:
    recipes = generate_recipes(300, seed=4)
    for r in recipes:
        assert 3 <= len(r.instructions) <= 12
        assert r.title.split()[-1] in {w for d in DISHES.values() for n in d.nouns for w in n.split()} | {
            INGREDIENTS[r.base].title.split()[-1]}
        names = [n for n, _ in r.items]
        text = " ".join(r.instructions).lower()
        assert any(n in text for n in names) or not names
    lines = [line for r in recipes for line in r.ingredient_lines]
    assert sum(bool(re.match(r"^\d", line)) for line in lines) > 0.8 * len(lines)
    assert any("," in line for line in lines)  # preparation notes ("halved")


def test_quantity_drives_how_much_is_drawn() -> None:
    def red_pixels(amount: float) -> int:
        total = 0
        for seed in range(4):
            spec = PhotoSpec("soup", "bowl", "heavy cream", None, (("cherry tomatoes", amount),), seed, 128, "")
            a = np.asarray(render(spec)).astype(int)
            total += int(((a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)).sum())
        return total

    assert red_pixels(2.0) > 1.5 * red_pixels(0.5)


def test_refuses_bad_input_and_replaces_with_force(tmp_path: Path) -> None:
    with pytest.raises(MalmError, match="--recipes"):
        generate(tmp_path / "a", recipes=0, seed=0)
    with pytest.raises(MalmError, match="--image-size"):
        generate(tmp_path / "a", recipes=5, seed=0, image_size=8)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MalmError, match="synth.json"):
        generate(foreign, recipes=5, seed=0)
    out = tmp_path / "out"
    generate(out, recipes=20, seed=5, image_size=48, workers=1)
    old = set((out / "images").rglob("*.jpg"))
    with pytest.raises(MalmError, match="--force"):
        generate(out, recipes=5, seed=6, image_size=48, workers=1)
    generate(out, recipes=5, seed=6, image_size=48, workers=1, force=True)
    new = set((out / "images").rglob("*.jpg"))
    assert not old & new and len(json.loads((out / "layer1.json").read_text())) == 5


def test_cli_command_and_light_import(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from malm.cli import app

    res = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "o"), "--recipes", "12", "--seed", "3",
                                   "--image-size", "48", "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats["recipes"] == 12 and (tmp_path / "o" / "layer1.json").is_file()
    code = ("import sys, malm.commands.synth, malm.training.synth; "
            "assert 'torch' not in sys.modules, 'synth imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ids_stay_unique_when_hashes_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 hex chars collide by chance near a million ids (Recipe1M's size): a clash must be re-hashed
    import malm.training.synth.recipes as rec

    real = rec._hex_id
    monkeypatch.setattr(rec, "_hex_id", lambda *p: "0123456789" if "again" not in p else real(*p))
    recipes = rec.generate_recipes(30, seed=0)
    ids = [r.id for r in recipes]
    images = [i for r in recipes for i in r.image_ids]
    assert len(set(ids)) == 30 and all(HEX10.match(i) for i in ids)
    assert len(set(images)) == len(images) and all(IMAGE_ID.match(i) for i in images)
