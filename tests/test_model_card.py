"""The model card in every bundle (README.md beside manifest.json) and `malm bundle info | card`."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_bundle import make_bundle, photo

from malm.bundle import BundleWriter, read_manifest, verify
from malm.edge_index.builder import remove_recipes
from malm.model_card import CARD, EXAMPLES, refresh_model_card, render_card, variant_rows

QUALITY = {
    "teacher_torch_fp32": {"size_mb": 22.1, "cosine_to_teacher": 1.0, "latency_ms_1t": 9.5,
                           "retrieval": {"R@1": 41.0, "R@5": 70.0, "R@10": 80.0, "medR": 2.0}},
    "image_fp32": {"size_mb": 0.01, "cosine_to_teacher": 0.99, "latency_ms_1t": 0.2,
                   "retrieval": {"R@1": 40.0, "R@5": 69.0, "R@10": 79.0, "medR": 2.0}},
}


def recipe1m_for(root: Path, ids: range) -> Path:
    """A Recipe1M-layout folder whose test recipes rec000i carry the photos the fake bundle knows."""
    layer1, layer2 = [], []
    for i in ids:
        rid = f"rec{i:04d}"
        layer1.append({"id": rid, "partition": "test", "url": "", "title": f"Dish number {i}",
                       "ingredients": [{"text": "2 cups rice"}], "instructions": [{"text": "cook ."}]})
        layer2.append({"id": rid, "images": [{"id": f"{rid}.jpg"}]})
        path = root / "images" / "test" / rid[0] / rid[1] / rid[2] / rid[3] / f"{rid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(i, 64).save(path, format="JPEG", quality=95)
    (root / "layer1.json").write_text(json.dumps(layer1))
    (root / "layer2.json").write_text(json.dumps(layer2))
    (root / "synth.json").write_text(json.dumps({"recipes": len(ids), "seed": 0}))
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_bundle(tmp_path_factory.mktemp("card") / "bundle", 12)
    with BundleWriter(root) as bw:
        bw.manifest["quality"] = QUALITY
        bw.manifest["model"] = {"name": "malm-tiny", "checkpoint_sha256": "ab" * 32}
        bw.write_json("report.json", {"variants": QUALITY, "eval_pairs": 350, "notes": ["a note"]})
    refresh_model_card(root)  # as the exporter does after its commit
    return root


def malm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MALM_NO_PROGRESS": "1", "COLUMNS": "200"})


def test_every_bundle_write_leaves_a_current_card(bundle: Path, tmp_path: Path) -> None:
    card = (bundle / CARD).read_text()
    assert stat.S_IMODE((bundle / CARD).stat().st_mode) == 0o644
    assert card.startswith("# malm-tiny")
    assert "Apache-2.0" in card and "not Recipe1M" in card
    assert "| image_fp32 | `encoders/image_fp32.onnx` | 0.01 | 40.0 | 69.0 | 79.0 | 2.0 | 0.9900 | 0.20 |" in card
    assert "| teacher_torch_fp32 | (not shipped) |" in card
    assert "the 350 held-out test pairs" in card and "- note: a note" in card
    assert "12 recipes, 16-d" in card and "M 16" in card and "ef_search 64" in card
    assert "Intended use and limits" in card and "resize the short side to 36" in card
    # The card is documentation: the manifest's hashed files do not list it, and the bundle still verifies.
    assert CARD not in read_manifest(bundle)["files"]
    verify(bundle)
    # It follows the bundle: an index write (here a removal, on a copy) rewrites it.
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    remove_recipes(copy, ["rec0000"])
    assert "11 recipes, 16-d" in (copy / CARD).read_text()


def test_render_card_with_nothing_exported_yet() -> None:
    text = render_card({"format_version": 1})
    assert "No image encoder exported" in text and "No index yet" in text
    assert variant_rows({}) == []


def test_bundle_info_table_and_json(bundle: Path) -> None:
    p = malm("bundle", "info", str(bundle), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    names = [r["variant"] for r in info["variants"]]
    assert names == ["teacher_torch_fp32", "image_fp32"]
    assert info["variants"][1]["R@1"] == 40.0 and info["variants"][1]["shipped"] is True
    assert info["index"]["recipes"] == 12 and info["index"]["M"] == 16 and info["index"]["rerank"] == "late_interaction"
    p = malm("bundle", "info", str(bundle), "--verify")
    assert p.returncode == 0, p.stderr
    assert "image_fp32" in p.stdout and "encoders/image_fp32.onnx" in p.stdout and "40.0" in p.stdout
    assert "12 recipes" in p.stdout and "hashes verified" in p.stdout
    p = malm("bundle", "info", str(bundle.parent / "nope"), "--json")
    assert p.returncode == 2 and "nope" in json.loads(p.stdout)["error"]


def test_card_examples_grid(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = recipe1m_for(tmp_path / "data", range(4))
    with BundleWriter(bundle) as bw:  # as `malm index build --recipes DATA` records it
        bw.manifest["index"]["recipes"] = str(data)
    p = malm("bundle", "card", str(bundle), "--data", str(data), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["examples"] == str(bundle / EXAMPLES)
    with Image.open(bundle / EXAMPLES) as im:
        assert im.format == "PNG" and im.width > 4 * 128 and im.height > 4 * 128
    card = (bundle / CARD).read_text()
    assert f"![retrieval examples]({EXAMPLES})" in card
    assert "Trained, exported and indexed on the procedural food benchmark (recipes 4, seed 0)." in card
