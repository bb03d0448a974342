"""The typed bundle manifest (malm/manifest.py): a real bundle's manifest round-trips unchanged, unknown keys
survive a rewrite, bad sections are refused naming the bundle and the field, and BundleWriter's setters refuse
sections that name files the bundle does not hold."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _sdk_bundle import fake_recipe_encoder, make_bundle, recipe

from malm.bundle import BundleWriter, load_manifest, read_manifest
from malm.edge_index.builder import add_recipes
from malm.errors import BundleError
from malm.manifest import EncoderEntry, IndexSection, IndexSettings, Manifest, RerankSection
from malm.sdk import Retriever


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("manifest") / "b", n=12, int8=True)


def _manifest(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "manifest.json").read_text()))


def test_a_real_manifest_round_trips_unchanged(bundle: Path) -> None:
    m = _manifest(bundle)
    assert {"encoders", "index", "rerank", "preprocess", "embedding", "selfcheck", "files"} <= set(m)
    typed = Manifest.from_dict(m, "here")
    assert typed.to_dict() == m
    assert typed.index is not None and typed.index.settings.count == 12 and typed.index.file in typed.files
    assert typed.rerank is not None and typed.rerank.kind == "late_interaction"
    assert typed.encoders["image_int8"].precision == "int8"
    assert load_manifest(bundle) == typed


def test_unknown_keys_are_kept_through_a_rewrite(bundle: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "b"
    shutil.copytree(bundle, root)
    m = _manifest(root)
    m["future_section"] = {"a": [1, 2]}
    m["encoders"]["image_fp32"]["opset"] = 17
    m["index"]["built_by"] = "a newer malm"
    m["rerank"]["temperature"] = 0.1
    m["embedding"]["normalized"] = True
    m["preprocess"]["colorspace"] = "srgb"
    (root / "manifest.json").write_text(json.dumps(m))
    assert Manifest.from_dict(m).to_dict() == m
    # The index writer rewrites the index, rerank and embedding sections through the typed setters.
    add_recipes(root, [recipe(i) for i in range(12, 15)], fake_recipe_encoder())
    after = _manifest(root)
    assert after["index"]["count"] == 15 and after["index"]["built_by"] == "a newer malm"
    assert after["future_section"] == {"a": [1, 2]} and after["encoders"]["image_fp32"]["opset"] == 17
    assert after["rerank"]["temperature"] == 0.1 and after["embedding"]["normalized"] is True
    assert after["preprocess"]["colorspace"] == "srgb"
    assert len(Retriever.load(root)) == 15


def _edit(fn: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def go(m: dict[str, Any]) -> dict[str, Any]:
        m = copy.deepcopy(m)
        fn(m)
        return m
    return go


BAD: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "not_a_manifest": (lambda m: {"format": "other"}, "not a malm bundle manifest"),
    "format_version": (_edit(lambda m: m.update(format_version=2)), "format version 2"),
    "encoders_list": (_edit(lambda m: m.update(encoders=[])), "'encoders' must be an object"),
    "encoder_no_file": (_edit(lambda m: m["encoders"]["image_fp32"].pop("file")), "encoder 'image_fp32' needs a 'file'"),
    "encoder_kind": (_edit(lambda m: m["encoders"]["image_fp32"].update(kind=3)), "'kind' must be a string"),
    "file_sha": (_edit(lambda m: next(iter(m["files"].values())).update(sha256="x")), "64 hex"),
    "index_file": (_edit(lambda m: m["index"].pop("store")), "index needs 'store'"),
    "index_M": (_edit(lambda m: m["index"].update(M="x")), "bad index settings.*'M' must be an integer"),
    "index_bool": (_edit(lambda m: m["index"].update(dim=True)), "'dim' must be an integer"),
    "index_space": (_edit(lambda m: m["index"].update(space="hamming")), "index settings.*space"),
    "rerank_kind": (_edit(lambda m: m["rerank"].update(kind="magic")), "bad rerank section.*kind"),
    "rerank_head_without_model": (_edit(lambda m: m["rerank"].update(kind="matching_head")), "needs 'model'"),
    "rerank_weight": (_edit(lambda m: m["rerank"].update(weight="heavy")), "'weight' must be a number"),
    "rerank_tokens": (_edit(lambda m: m["rerank"].update(tokens=5)), "'tokens' must be a file name"),
    "preprocess_size": (_edit(lambda m: m["preprocess"].update(size="224")), "preprocess.*'size'"),
    "preprocess_std": (_edit(lambda m: m["preprocess"].update(std=[1.0, float("nan"), 1.0])), "preprocess.*'std'"),
    "embedding_dim": (_edit(lambda m: m["embedding"].update(dim=0)), "embedding.dim"),
    "selfcheck_min": (_edit(lambda m: m["selfcheck"].update(min_cosine=2)), "min_cosine"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_sections_are_refused_naming_the_bundle_and_field(bundle: Path, name: str) -> None:
    damage, message = BAD[name]
    with pytest.raises(BundleError, match=message) as e:
        Manifest.from_dict(damage(_manifest(bundle)), f"bundle {bundle}")
    assert str(e.value).startswith(f"bundle {bundle}:")


def test_read_manifest_validates_through_the_schema(bundle: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "b"
    shutil.copytree(bundle, root)
    m = _manifest(root)
    m["rerank"]["candidates"] = "many"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"bundle {root}: bad rerank section.*'candidates'"):
        read_manifest(root)


def test_setters_refuse_files_the_bundle_does_not_hold(tmp_path: Path) -> None:
    src = tmp_path / "x.onnx"
    src.write_bytes(b"x")
    settings = IndexSettings(dim=4)
    with BundleWriter(tmp_path / "b") as bw:
        with pytest.raises(BundleError, match="encoder 'image_fp32' files"):
            bw.set_encoder("image_fp32", EncoderEntry("encoders/image_fp32.onnx", "onnx", "image", "fp32"))
        with pytest.raises(BundleError, match="index files"):
            bw.set_index(IndexSection("index/a.hnsw", "index/a.sqlite", settings))
        with pytest.raises(BundleError, match="re-rank files"):
            bw.set_rerank(RerankSection(dim=3))
        bw.add_file(src, "encoders/image_fp32.onnx")
        bw.set_encoder("image_fp32", EncoderEntry("encoders/image_fp32.onnx", "onnx", "image", "fp32"))
        bw.set_rerank(None)  # dropping an absent section is fine
    m = _manifest(tmp_path / "b")
    assert m["encoders"] == {"image_fp32": {"file": "encoders/image_fp32.onnx", "kind": "onnx", "role": "image",
                                            "precision": "fp32"}}
    assert "rerank" not in m


def test_manifest_module_is_stdlib_only() -> None:
    code = ("import sys, malm.manifest, malm.bundle; "
            "bad = [m for m in ('numpy', 'PIL', 'torch', 'hnswlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
