"""`malm bundle web`: the web bundle's files, hashes and layout (no browser; tests/test_web_client.py runs it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _sdk_bundle import make_bundle
from typer.testing import CliRunner

from malm.cli import app
from malm.edge_index.hnsw import HnswIndex
from malm.edge_index.store import RecipeStore
from malm.errors import MalmError
from malm.web_bundle import export_web, quantize_rows_int8


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("web") / "bundle", 24, int8=True)


def _python_vectors(bundle: Path) -> tuple[list[int], np.ndarray]:
    m = json.loads((bundle / "manifest.json").read_text())
    store = RecipeStore.open(bundle / m["index"]["store"])
    labels = store.labels()
    store.close()
    from malm.manifest import IndexSettings

    index = HnswIndex.load(bundle / m["index"]["file"], IndexSettings.from_dict(m["index"]), labels)
    return labels, index.get_vectors(labels)


def test_every_file_is_listed_with_its_hash(bundle: Path, tmp_path: Path) -> None:
    out = export_web(bundle, tmp_path / "web").out
    m = json.loads((out / "manifest.json").read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for rel, e in m["files"].items():
        data = (out / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"]
    assert m["default_encoder"] == "image_int8" and m["encoders"]["image_int8"]["tokens"] is True
    assert m["source"]["manifest_sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert m["rerank"]["kind"] == "late_interaction"


def test_vectors_and_records_are_in_one_order(bundle: Path, tmp_path: Path) -> None:
    out = export_web(bundle, tmp_path / "web").out
    m = json.loads((out / "manifest.json").read_text())
    labels, vecs = _python_vectors(bundle)
    rows = json.loads((out / "recipes.json").read_text())
    assert [r["label"] for r in rows] == labels and rows[3]["id"] == "rec0003" and rows[3]["names"]
    web = np.frombuffer((out / "vectors.bin").read_bytes(), "<f2").reshape(m["vectors"]["count"], m["vectors"]["dim"])
    np.testing.assert_allclose(web.astype(np.float32), vecs, atol=1e-3)
    offsets = np.frombuffer((out / "rerank/offsets.bin").read_bytes(), "<u4")
    assert len(offsets) == len(rows) + 1 and offsets[-1] * m["rerank"]["dim"] * 2 == m["files"]["rerank/tokens.bin"]["bytes"]


def test_int8_vectors(bundle: Path, tmp_path: Path) -> None:
    out = export_web(bundle, tmp_path / "web", vectors="int8", rerank=False).out
    m = json.loads((out / "manifest.json").read_text())
    _, vecs = _python_vectors(bundle)
    q = np.frombuffer((out / "vectors.bin").read_bytes(), np.int8).reshape(vecs.shape).astype(np.float32)
    s = np.frombuffer((out / m["vectors"]["scales"]).read_bytes(), "<f4")
    np.testing.assert_allclose(q * s[:, None], vecs, atol=float(s.max()) * 0.5 + 1e-7)
    assert "rerank" not in m and not (out / "rerank").exists()
    q0, s0 = quantize_rows_int8(np.zeros((1, 4), np.float32))
    assert (q0 == 0).all() and s0[0] == 1.0


def test_refuses_to_overwrite_and_unknown_variants(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(MalmError, match="not empty"):
        export_web(bundle, tmp_path / "busy")
    with pytest.raises(MalmError, match="not a web bundle"):
        export_web(bundle, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(MalmError, match="no ONNX image encoder"):
        export_web(bundle, tmp_path / "w", variants=["fp16"])
    export_web(bundle, tmp_path / "w")
    export_web(bundle, tmp_path / "w", variants=["fp32"], overwrite=True)
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["default_encoder"] == "image_fp32"


def test_a_tampered_bundle_is_not_exported(bundle: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    with open(bad / "encoders" / "image_int8.onnx", "ab") as f:
        f.write(b"\0")
    res = CliRunner().invoke(app, ["bundle", "web", str(bad), "--out", str(tmp_path / "web")])
    assert res.exit_code != 0 and not (tmp_path / "web").exists()


def test_cli(bundle: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bundle", "web", str(bundle), "--out", str(tmp_path / "web"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["recipes"] == 24 and info["variants"] == ["int8"] and info["rerank"] is True


def test_a_signed_bundles_signature_travels_with_its_manifest(bundle: Path, tmp_path: Path) -> None:
    import shutil

    signed = tmp_path / "signed"
    shutil.copytree(bundle, signed)
    (signed / "manifest.sig").write_text('{"signature": "stand-in: malm bundle sign writes this file"}')
    out = export_web(signed, tmp_path / "web").out
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["signatures"] == ["source/manifest.sig"]
    assert (out / "source/manifest.sig").read_bytes() == (signed / "manifest.sig").read_bytes()
    assert (out / "source/manifest.json").read_bytes() == (signed / "manifest.json").read_bytes()
    assert "source/manifest.sig" in m["files"]


def test_a_bundle_whose_reranking_is_off_ships_none_and_says_why(bundle: Path, tmp_path: Path) -> None:
    import shutil

    off = tmp_path / "off"
    shutil.copytree(bundle, off)
    m = json.loads((off / "manifest.json").read_text())
    m["rerank"] |= {"enabled": False, "disabled_reason": "did not help on validation"}
    (off / "manifest.json").write_text(json.dumps(m))
    out = export_web(off, tmp_path / "web").out
    web = json.loads((out / "manifest.json").read_text())
    assert "rerank" not in web and not (out / "rerank").exists()
    assert web["rerank_disabled"] == "did not help on validation"
