"""`malm data prepare` and `malm eval` through the real command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from malm.cli import app
from malm.errors import MalmError

runner = CliRunner()
MALM = Path(sys.executable).parent / "malm"


def test_data_prepare_builds_then_reuses(tmp_path, make_recipe1m) -> None:
    root = make_recipe1m(tmp_path / "r1m")
    first = runner.invoke(app, ["data", "prepare", str(root), "--min-freq", "1"])
    assert first.exit_code == 0, first.output
    assert f"built {root / '.malm_cache'}" in first.stdout
    assert "train: 3 recipes, 2 paired, 3 images (1 listed but missing)" in first.stdout
    assert "skipped layer1 records:" in first.stdout
    second = runner.invoke(app, ["data", "prepare", str(root), "--min-freq", "1", "--json"])
    assert second.exit_code == 0
    manifest = json.loads(second.stdout)
    assert manifest["reused"] is True and manifest["stats"]["paired"] == {"train": 2, "val": 1, "test": 1}
    assert manifest["settings"]["min_freq"] == 1


def test_data_prepare_options(tmp_path, make_recipe1m) -> None:
    root = make_recipe1m(tmp_path / "r1m", images_subdir="pics")
    cache = tmp_path / "elsewhere"
    r = runner.invoke(app, ["data", "prepare", str(root), "--images", str(root / "pics"), "--cache", str(cache),
                            "--min-freq", "1", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["reused"] is False and m["cache_dir"] == str(cache.resolve()) and sum(m["stats"]["paired"].values()) == 4
    assert (cache / "manifest.json").is_file() and not (root / ".malm_cache").exists()
    again = runner.invoke(app, ["data", "prepare", str(root), "--images", str(root / "pics"), "--cache", str(cache),
                                "--min-freq", "1", "--force", "--json"])
    assert json.loads(again.stdout)["reused"] is False
    strict = runner.invoke(app, ["data", "prepare", str(root), "--strict"])
    assert isinstance(strict.exception, MalmError) and "malformed record" in str(strict.exception)


def _npz(path: Path, image: np.ndarray, recipe: np.ndarray) -> Path:
    np.savez(path, image=image, recipe=recipe)
    return path


def test_eval_json_shape_and_values(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    path = _npz(tmp_path / "emb.npz", x, x)
    r = runner.invoke(app, ["eval", "--embeddings", str(path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for direction in ("im2recipe", "recipe2im"):
        assert list(out[direction]) == ["1k"]
        e = out[direction]["1k"]
        assert (e["medR"], e["R@1"], e["R@5"], e["R@10"]) == (1.0, 100.0, 100.0, 100.0)
    assert out["protocol"] == "ht" and out["notes"][0] == "size 10k skipped: only 1000 pairs"
    assert out["im2recipe"]["1k"]["subsets"] == 1  # 1k of 1000 pairs: every subset is the whole set

    r = runner.invoke(app, ["eval", "--embeddings", str(path), "--json", "--protocol", "tfood",
                            "--size", "500", "--size", "100", "--seed", "3"])
    out = json.loads(r.stdout)
    assert list(out["im2recipe"]) == ["500", "100"] and out["subsets"] == {"500": 2, "100": 10}
    assert out["seed"] == 3


def test_eval_table(tmp_path) -> None:
    rng = np.random.default_rng(1)
    path = _npz(tmp_path / "emb.npz", rng.normal(size=(300, 8)), rng.normal(size=(300, 8)))
    r = runner.invoke(app, ["eval", "--embeddings", str(path), "--size", "100"])
    assert r.exit_code == 0, r.output
    assert "im2recipe" in r.stdout and "recipe2im" in r.stdout and "R@10" in r.stdout and "±" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "5000"], "size 5000 is larger than the 300 pairs"),
        ([], None),  # filled in below: an npz without the `recipe` array
    ],
)
def test_eval_refusals(tmp_path, args, message) -> None:
    if message is None:
        np.savez(tmp_path / "emb.npz", image=np.ones((300, 4)), other=np.ones((300, 4)))
        message = "missing array\\(s\\) recipe \\(found: image, other\\)"
    else:
        _npz(tmp_path / "emb.npz", np.ones((300, 4)), np.ones((300, 4)))
    r = runner.invoke(app, ["eval", "--embeddings", str(tmp_path / "emb.npz"), *args])
    assert isinstance(r.exception, MalmError)
    assert re.search(message, str(r.exception)), str(r.exception)


def test_eval_protocol_is_a_declared_choice(tmp_path) -> None:
    _npz(tmp_path / "emb.npz", np.ones((300, 4)), np.ones((300, 4)))
    r = runner.invoke(app, ["eval", "--embeddings", str(tmp_path / "emb.npz"), "--protocol", "nope"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 2  # a usage error, caught by the parser before any work
    assert "'nope' is not one of 'ht', 'tfood'" in r.output


def test_eval_source_checks(tmp_path) -> None:
    r = runner.invoke(app, ["eval"])
    assert "exactly one source" in str(r.exception)
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path)])
    assert "needs --data" in str(r.exception)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    r = runner.invoke(app, ["eval", "--embeddings", str(tmp_path / "bad.npz")])
    assert "bad.npz: not a readable .npz" in str(r.exception)


@pytest.mark.skipif(not MALM.exists(), reason="console script not installed next to this python")
def test_console_script_prints_error_and_exits_2(tmp_path) -> None:
    p = subprocess.run([str(MALM), "eval", "--embeddings", str(tmp_path / "missing.npz")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == f"error: {tmp_path / 'missing.npz'}: file not found"
    assert p.stdout == ""


def test_synth_benchmark_prepares_with_matching_counts(tmp_path) -> None:
    """The generator's output is read as real Recipe1M: the reader's counts equal the generator's."""
    out = tmp_path / "bench"
    r = runner.invoke(app, ["data", "synth", str(out), "--recipes", "40", "--seed", "0", "--image-size", "64",
                            "--workers", "1", "--json"])
    assert r.exit_code == 0, r.output
    synth = json.loads(r.stdout.strip().splitlines()[-1])
    r = runner.invoke(app, ["data", "prepare", str(out), "--min-freq", "1", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)["stats"]
    for split, counts in synth["per_partition"].items():
        assert stats["recipes"][split] == counts["recipes"]
        assert stats["paired"][split] == counts["paired"]
        assert stats["images_present"][split] == counts["images"]
    assert stats["skipped"] == {} and sum(stats["images_missing"].values()) == 0 and stats["has_det_ingrs"]


def test_eval_checkpoint_matches_embed_split(tmp_path) -> None:
    pytest.importorskip("torch", reason="--checkpoint needs the [train] extra")
    from _tiny_run import make_dataset, tiny_config

    from malm.evaluation import retrieval_metrics
    from malm.training.embed import embed_split

    data = make_dataset(tmp_path / "r1m", n_train=16)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--no-progress", "--data", str(data), "--preset",
                            str(tiny_config(tmp_path / "c.json", epochs=1)), "--out", str(run)])
    assert r.exit_code == 0, r.output
    emb = tmp_path / "emb.npz"
    r = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", str(data), "--split", "test", "--tag", "last",
                            "--size", "8", "--json", "--save", str(emb)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    img, rec, ids = embed_split(run, data, split="test", tag="last")
    assert out == retrieval_metrics(img, rec, sizes=[8])
    with np.load(emb) as z:
        np.testing.assert_allclose(z["image"], img, atol=1e-6)
        assert z["ids"].tolist() == ids
    again = runner.invoke(app, ["eval", "--embeddings", str(emb), "--size", "8", "--json"])
    assert json.loads(again.stdout) == out
