"""Damaged or hostile bundles and checkpoints are refused with a clear `MalmError`; nothing on the load
path unpickles; no command shows a Python traceback for a user error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _sdk_bundle import make_bundle

from malm.bundle import read_manifest, verify
from malm.errors import MalmError
from malm.sdk import Retriever

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("rb") / "bundle", 20)


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        m = json.loads((root / "manifest.json").read_text())
        fn(m)
        (root / "manifest.json").write_text(json.dumps(m))
    return apply


def _index(root: Path) -> Path:
    return root / read_manifest(root)["index"]["file"]


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def _symlink_out(root: Path) -> None:
    (root / "evil").symlink_to("/etc")
    _edit(lambda m: m["encoders"]["image_fp32"].__setitem__("file", "evil/hostname"))(root)


def _symlink_index(root: Path) -> None:
    idx = _index(root)
    idx.unlink()
    idx.symlink_to("/etc/hostname")


CASES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    # name: (damage, expected message, also refused with verify=False)
    "missing_index": (lambda r: _index(r).unlink(), "missing file|not found", True),
    "missing_encoder": (lambda r: (r / "encoders/image_fp32.onnx").unlink(), "missing file|cannot load", True),
    "missing_manifest": (lambda r: (r / "manifest.json").unlink(), "no manifest.json", True),
    "sha256_mismatch": (lambda r: _flip(_index(r)), "sha256", False),
    "truncated_index": (lambda r: _index(r).write_bytes(_index(r).read_bytes()[:200]), "truncated|bytes", True),
    "truncated_index_header": (lambda r: _index(r).write_bytes(b"\0" * 20), "truncated", True),
    "truncated_store": (lambda r: (r / read_manifest(r)["index"]["store"]).write_bytes(b"SQLite format 3\0"),
                        "bytes|recipe store", True),
    "wrong_dimension": (_edit(lambda m: (m["index"].__setitem__("dim", 8), m["embedding"].__setitem__("dim", 8))),
                        "dim 16, manifest says 8", True),
    "dim_mismatch_encoder_index": (_edit(lambda m: m["index"].__setitem__("dim", 8)), "dim", True),
    "unknown_format_version": (_edit(lambda m: m.__setitem__("format_version", 99)), "format version 99", True),
    "not_json": (lambda r: (r / "manifest.json").write_bytes(b"\xff{not json"), "not valid JSON", True),
    "not_a_manifest": (lambda r: (r / "manifest.json").write_text("[]"), "not a malm bundle manifest", True),
    "traversal_in_files": (_edit(lambda m: m["files"].__setitem__("../../etc/passwd", {"sha256": "0" * 64,
                                                                                       "bytes": 1})),
                           "outside the bundle", True),
    "absolute_encoder_path": (_edit(lambda m: m["encoders"]["image_fp32"].__setitem__("file", "/etc/passwd")),
                              "outside the bundle", True),
    "traversal_index_path": (_edit(lambda m: m["index"].__setitem__("file", "../x/index/recipes.hnsw")),
                             "outside the bundle|not listed", True),
    "symlink_dir_out": (_symlink_out, "outside the bundle", True),
    "symlink_file_out": (_symlink_index, "outside the bundle", True),
    "encoders_not_object": (_edit(lambda m: m.__setitem__("encoders", ["x"])), "'encoders' must be an object", True),
    "embedding_not_object": (_edit(lambda m: m.__setitem__("embedding", "x")), "'embedding' must be an object", True),
    "preprocess_not_object": (_edit(lambda m: m.__setitem__("preprocess", "x")), "'preprocess' must be", True),
    "preprocess_bad_values": (_edit(lambda m: m["preprocess"].update(size="224")), "preprocess", True),
    "preprocess_nan_std": (_edit(lambda m: m["preprocess"].update(std=[float("nan")] * 3)), "preprocess", True),
    "bad_sha_entry": (_edit(lambda m: m["files"].update({"vocab.json": {"sha256": "zz", "bytes": 1}})),
                      "64 hex", True),
    "bytes_is_bool": (_edit(lambda m: [e.__setitem__("bytes", True) for e in m["files"].values()]), "bytes", True),
    "index_settings_bad": (_edit(lambda m: m["index"].__setitem__("M", "x")), "index settings", True),
    "index_count_wrong": (_edit(lambda m: m["index"].__setitem__("count", 3)), "count 3", True),
    "no_index": (_edit(lambda m: m.pop("index")), "no recipe index", True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_bundles_are_refused_clearly(bundle: Path, tmp_path: Path, name: str) -> None:
    damage, message, without_verify = CASES[name]
    root = tmp_path / "b"
    shutil.copytree(bundle, root, symlinks=True)
    damage(root)
    with pytest.raises(MalmError, match=message) as e:
        Retriever.load(root)
    assert str(root) in str(e.value)
    if without_verify:
        with pytest.raises(MalmError):
            Retriever.load(root, verify=False)


def test_not_a_bundle(tmp_path: Path) -> None:
    for path, msg in [(tmp_path / "nope", "not a directory"), (Path(__file__), "not a directory"),
                      (tmp_path, "no manifest.json")]:
        with pytest.raises(MalmError, match=msg):
            Retriever.load(path)


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    import torch
    from _tiny_run import tiny_config

    from malm.text import Vocabulary
    from malm.training import checkpoint as ck
    from malm.training.config import ExperimentConfig
    from malm.training.models.retrieval import RetrievalModel

    torch.set_num_threads(1)
    run = tmp_path / "run"
    run.mkdir()
    cfg = ExperimentConfig.from_dict(json.loads(tiny_config(tmp_path / "a.json").read_text()))
    vocab = Vocabulary.from_dict({"words": ["<pad>", "<start>", "<end>", "<unk>", "rice", "egg"]})
    ck.save_run_files(run, cfg, vocab)
    ck.save_weights(run, "best", RetrievalModel(cfg.model, vocab_size=len(vocab)), {"step": 1, "epoch": 1})
    assert ck.load_model(run).model is not None
    other = json.loads(tiny_config(tmp_path / "b.json").read_text())
    other["model"]["embed_dim"] = 24
    (run / "config.json").write_text(json.dumps(other))
    with pytest.raises(MalmError, match="do not fit config.json"):
        ck.load_model(run)
    # A torn save (new weights, old JSON) still loads: the header carries the JSON of its own weights.
    ck.save_run_files(run, cfg, vocab)
    ck.save_weights(run, "best", RetrievalModel(cfg.model, vocab_size=len(vocab)), {"step": 2, "epoch": 1})
    (run / "best.json").write_text(json.dumps({"step": 1, "epoch": 1}))
    assert ck.load_model(run).meta["step"] == 2
    (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:100])
    with pytest.raises(MalmError, match="safetensors"):
        ck.load_model(run)


# --- no pickle on any load path ----------------------------------------------------------------------
UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b", re.M), "pickle module"),
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"\btorch\.jit\.load\("), "torch.jit.load"),
    (re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec builtin"),
]


def test_no_pickle_anywhere_in_the_source() -> None:
    found = []
    files = sorted((ROOT / "malm").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 50
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern, what in UNSAFE:
            for m in pattern.finditer(text):
                found.append(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {what}")
        # torch.load only with weights_only=True (tensors, never arbitrary objects).
        for m in re.finditer(r"\btorch\.load\(", text):
            call = text[m.start():text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                found.append(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: torch.load {call}")
    assert not found, "unsafe deserialization:\n" + "\n".join(found)


# --- no traceback for a user error, on any command ----------------------------------------------------
def _malm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MALM_BUNDLE"}
    return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "OMP_NUM_THREADS": "1"})


def test_cli_user_errors_never_show_a_traceback(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    nope = str(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 not a zip")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"id": "x"}\n')
    b = str(bundle)
    commands = [
        ["train", "--data", nope, "--out", str(tmp_path / "run"), "--preset", "ht-tiny"],
        ["train", "--data", str(empty), "--out", str(tmp_path / "run"), "--preset", "nosuch"],
        ["train", "--data", str(empty), "--out", str(tmp_path / "run2"), "--resume"],
        ["eval", "--embeddings", nope + ".npz"],
        ["eval", "--embeddings", str(bad_npz)],
        ["eval", "--checkpoint", nope, "--data", nope],
        ["export", "--checkpoint", nope, "--target", "onnx", "--data", nope, "--bundle", str(tmp_path / "eb")],
        ["export", "--checkpoint", str(empty), "--target", "nosuch", "--data", nope, "--bundle", str(tmp_path / "e")],
        ["index", "build", "--checkpoint", nope, "--recipes", nope, "--bundle", nope],
        ["index", "add", "--bundle", nope, "--recipes", nope],
        ["index", "add", "--bundle", b, "--recipes", str(empty)],
        ["index", "remove", "--bundle", nope, "--ids", "a"],
        ["query", nope + ".jpg", "--bundle", nope],
        ["query", str(jsonl), "--bundle", str(jsonl)],
        ["query", str(empty), "--bundle", b, "-k", "0"],
        ["data", "prepare", nope],
        ["data", "synth", str(jsonl), "--recipes", "2"],
        ["data", "synth", str(tmp_path / "s"), "--recipes", "-1"],
    ]
    # In-process through the console entry point (`malm.cli.main`, what `.venv/bin/malm` runs): an exception
    # other than SystemExit escaping it is exactly what would print a traceback. One subprocess checks the real
    # entry point end to end.
    from malm.cli import main

    for args in commands:
        monkeypatch.setattr(sys, "argv", ["malm", *args])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code not in (0, None), args
        assert err.strip() and "Traceback" not in err, (args, err)
    p = _malm(*commands[-1])
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.strip().startswith("error:"), p.stderr
    assert not Path(nope).exists()  # a mistyped path is never created as a side effect
    verify(bundle)
