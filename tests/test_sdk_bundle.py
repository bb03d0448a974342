"""Bundle verification as the SDK sees it: a clear error for every way a bundle can be broken."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from malm import Retriever
from malm.bundle import BundleWriter, read_manifest, verify
from malm.errors import BundleError
from malm.sdk.bundle_loader import open_bundle


@pytest.fixture
def good(tiny_bundle: Path) -> Path:
    return tiny_bundle  # shared (tests/conftest.py): `bundle` below copies it before a test changes it


@pytest.fixture
def bundle(good: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(good, dst)
    return dst


def edit_manifest(root: Path, fn) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_good_bundle_loads(bundle: Path) -> None:
    b = open_bundle(bundle)
    assert b.dim == 16 and b.preprocess.size == 32
    assert len(Retriever.load(bundle)) == 20


def test_tampered_file(bundle: Path) -> None:
    path = bundle / "encoders/image_fp32.onnx"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"image_fp32.onnx does not match its sha256.*tampered"):
        Retriever.load(bundle)


def test_truncated_file(bundle: Path) -> None:
    rel = read_manifest(bundle)["index"]["file"]
    path = bundle / rel
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"recipes.hnsw has 100 bytes.*truncated"):
        Retriever.load(bundle)


def test_missing_file(bundle: Path) -> None:
    (bundle / read_manifest(bundle)["index"]["store"]).unlink()
    with pytest.raises(BundleError, match="missing file index/recipes.sqlite"):
        Retriever.load(bundle)


def test_path_traversal(bundle: Path) -> None:
    (bundle.parent / "evil.onnx").write_bytes(b"x")
    edit_manifest(bundle, lambda m: m["files"].__setitem__("../evil.onnx", {"sha256": "0" * 64, "bytes": 1}))
    with pytest.raises(BundleError, match="outside the bundle"):
        Retriever.load(bundle)


def test_path_traversal_in_index_section(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m["index"].__setitem__("file", "/etc/passwd"))
    with pytest.raises(BundleError, match="not listed"):
        Retriever.load(bundle)


def test_unknown_version(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m.__setitem__("format_version", 99))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        Retriever.load(bundle)


def test_wrong_dimension_vs_index(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m["embedding"].__setitem__("dim", 32))
    with pytest.raises(BundleError, match="index has dim 16, the encoders' embedding dim is 32"):
        Retriever.load(bundle)


def test_index_settings_mismatch(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m["index"].__setitem__("M", 48))
    with pytest.raises(BundleError, match="M=16.*manifest says M=48"):
        Retriever.load(bundle)


def test_encoder_dimension_vs_index(bundle: Path, tmp_path: Path) -> None:
    from _sdk_bundle import image_onnx

    other = image_onnx(tmp_path / "other.onnx", dim=8)
    with BundleWriter(bundle) as bw:
        bw.add_file(other, "encoders/image_fp32.onnx")
    verify(bundle)  # hashes are fine: only the dimension is wrong
    with pytest.raises(BundleError, match="gives dim 8, the index has dim 16"):
        Retriever.load(bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        Retriever.load(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="no manifest.json"):
        Retriever.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        Retriever.load(tmp_path)


def test_bundle_without_index(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as bw:
        bw.manifest["preprocess"] = {"size": 32, "resize": 36}
        bw.manifest["embedding"] = {"dim": 16, "metric": "cosine"}
    with pytest.raises(BundleError, match="has no recipe index"):
        Retriever.load(tmp_path / "b")


def test_verification_is_remembered_until_a_file_changes(bundle: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import malm.bundle as bundle_mod

    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path / "cache"))
    hashed: list[Path] = []
    real = bundle_mod.sha256_path
    monkeypatch.setattr(bundle_mod, "sha256_path", lambda p: hashed.append(p) or real(p))
    open_bundle(bundle)
    assert not (tmp_path / "cache" / "verified").exists() or not any((tmp_path / "cache").rglob("*.json")), \
        "files written moments ago are never stamped (their mtime tick may not change on a quick rewrite)"
    for f in bundle.rglob("*"):
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns - 10_000_000_000))
    time.sleep(0.3)  # utime itself set the ctimes: a stamp waits until they are older than the clock's tick
    hashed.clear()

    open_bundle(bundle)
    assert hashed, "the first open hashes every file"
    hashed.clear()
    open_bundle(bundle)
    assert hashed == [], "an unchanged bundle is not hashed again"
    open_bundle(bundle, check_hashes="full")
    assert hashed, "verify='full' always hashes"

    # Same size, new content (and so a new mtime): the stamp no longer matches and the full check catches it.
    path = bundle / "encoders/image_fp32.onnx"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        open_bundle(bundle)
