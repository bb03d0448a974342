"""Bundle writes as users call them: relative roots, replacing live files, file modes, failed writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from malm.bundle import BundleWriter, read_manifest, verify


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")] if p.name != ".lock"}


@pytest.fixture
def umask_022():  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_relative_root_replaces_a_live_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` writes `runs/demo/bundle`, relative, and its second export rewrites files the first one wrote.
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "a.txt"
    src.write_text("one")
    with BundleWriter(Path("runs/bundle")) as bw:
        bw.add_file(src, "a.txt")
        bw.write_json("report.json", {"v": 1})
    src.write_text("two")
    with BundleWriter(Path("runs/bundle")) as bw:
        bw.add_file(src, "a.txt")
        bw.write_json("report.json", {"v": 2})
    root = tmp_path / "runs" / "bundle"
    assert (root / "a.txt").read_text() == "two"
    assert json.loads((root / "report.json").read_text()) == {"v": 2}
    verify(root, read_manifest(root))
    # (The model card, README.md, is written by the exporter and the index writers, not by a bare writer.)
    assert sorted(p.name for p in root.iterdir()) == [".lock", "a.txt", "manifest.json", "report.json"]


def test_bundle_files_are_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    src_dir = tmp_path / "pkg.mlpackage"
    (src_dir / "Data").mkdir(parents=True)
    (src_dir / "Data" / "weights.bin").write_bytes(b"w")
    os.chmod(src_dir, 0o700)  # as mkdtemp leaves a converter's output
    src = tmp_path / "model.onnx"
    src.write_bytes(b"m")
    os.chmod(src, 0o600)
    root = tmp_path / "bundle"
    for _ in range(2):  # the second pass replaces live files, through the staged `.next` path
        with BundleWriter(root) as bw:
            bw.add_file(src, "encoders/model.onnx")
            bw.add_file(src_dir, "encoders/pkg.mlpackage")
            bw.write_json("report.json", {})
    modes = _modes(root)
    assert modes["manifest.json"] == 0o644 and modes["report.json"] == 0o644
    assert modes["encoders/model.onnx"] == 0o644
    assert modes["encoders/pkg.mlpackage"] == 0o755 and modes["encoders/pkg.mlpackage/Data"] == 0o755
    assert modes["encoders/pkg.mlpackage/Data/weights.bin"] == 0o644


def test_failed_write_leaves_the_old_bundle_and_no_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "a.txt"
    src.write_text("one")
    with BundleWriter(Path("bundle")) as bw:
        bw.add_file(src, "a.txt")
    before = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    src.write_text("two")
    with pytest.raises(RuntimeError), BundleWriter(Path("bundle")) as bw:
        bw.add_file(src, "a.txt")
        bw.write_text("b.txt", "new")
        raise RuntimeError("export failed halfway")
    root = tmp_path / "bundle"
    assert sorted(p.name for p in root.iterdir()) == before  # neither b.txt nor a staged a.txt
    assert not [p for p in root.rglob(".*") if p.name != ".lock"]
    assert (root / "a.txt").read_text() == "one"
    verify(root, read_manifest(root))
