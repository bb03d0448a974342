"""kill -9 in the middle of writes: the previous version (or the new one) stays loadable and complete.

Each test runs a writer in a subprocess that repeats its write in a loop, kills it with SIGKILL after a
varying short delay (so the kill lands at different points of the write), and then checks that the bundle /
run verifies and loads. Two writers on one bundle are serialized by `BundleWriter`'s lock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _sdk_bundle import DIM, image_onnx, make_bundle

from malm.bundle import BundleWriter, read_manifest, verify
from malm.errors import BundleError

TESTS = Path(__file__).parent
ROOT = TESTS.parent
DELAYS = (0.15, 0.35, 0.6, 0.9)  # seconds after the child reports it is writing


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _kill_after_start(proc: subprocess.Popen[str], delay: float) -> int:
    """Wait for the child's 'go' line (imports done), let it write for `delay` s, then SIGKILL it."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "go", (line, proc.stderr.read() if proc.stderr else "")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    n = 0
    for out in proc.stdout:
        n += out.startswith("done")
    return n


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("crash") / "bundle", 40, with_recipe_encoder=True)


def _loads(root: Path) -> int:
    from malm.sdk import Retriever

    verify(root)
    r = Retriever.load(root)
    return len(r)


INDEX_WRITER = """
    import sys
    import numpy as np
    from malm.edge_index.builder import add_recipes, remove_recipes
    from malm.edge_index.records import RecipeRecord
    root, dim = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    enc = lambda recs: rng.normal(size=(len(recs), dim)).astype(np.float32)
    new = [RecipeRecord(id=f"new{i}", title=f"new {i}", ingredients=("rice",), instructions=("cook.",))
           for i in range(300)]
    print("go", flush=True)
    while True:
        add_recipes(root, new, enc)
        print("done add", flush=True)
        remove_recipes(root, [r.id for r in new])
        print("done remove", flush=True)
"""


def test_kill_during_index_save_keeps_a_loadable_index(bundle: Path, tmp_path: Path) -> None:
    seen_counts = set()
    for delay in DELAYS:
        root = tmp_path / f"b{delay}"
        shutil.copytree(bundle, root)
        _kill_after_start(_spawn(INDEX_WRITER, str(root), str(DIM)), delay)
        n = _loads(root)  # verifies every sha256, then opens index + store
        assert n in (40, 340), n  # the old index or the new one, never something in between
        seen_counts.add(n)
        # And the next writer recovers: the lock is free, stale staging is cleaned up, updates still work.
        from malm.edge_index.builder import remove_recipes

        remove_recipes(root, ["rec0000"])
        assert _loads(root) == n - 1
        assert not list(root.glob(".index-staging-*"))


EXPORT_WRITER = """
    import sys
    from pathlib import Path
    from malm.bundle import BundleWriter
    root, a, b = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    print("go", flush=True)
    i = 0
    while True:
        src = (a, b)[i % 2]
        with BundleWriter(root) as bw:  # what `malm export` does: replace encoders + report, commit manifest
            bw.add_file(src, "encoders/image_fp32.onnx")
            bw.add_file(src, "encoders/image_int8.onnx")
            bw.write_json("report.json", {"round": i, "pad": "x" * 200000})
            bw.manifest["encoders"]["image_int8"] = {"file": "encoders/image_int8.onnx", "kind": "onnx",
                                                     "role": "image", "precision": "int8"}
            bw.manifest["round"] = i
        print("done", i, flush=True)
        i += 1
"""


def test_kill_during_export_keeps_a_complete_bundle(bundle: Path, tmp_path: Path) -> None:
    # Two valid encoders of the same shape, padded so that copying them takes measurable time.
    a = image_onnx(tmp_path / "enc" / "a.onnx", seed=1)
    b = image_onnx(tmp_path / "enc" / "b.onnx", seed=2)
    rounds = []
    for delay in DELAYS:
        root = tmp_path / f"b{delay}"
        shutil.copytree(bundle, root)
        rounds.append(_kill_after_start(_spawn(EXPORT_WRITER, str(root), str(a), str(b)), delay))
        assert _loads(root) == 40
        manifest = read_manifest(root)
        for entry in manifest["encoders"].values():
            assert (root / entry["file"]).exists()
        # The next writer finishes or discards what the killed one left, and the bundle is clean again.
        with BundleWriter(root) as bw:
            bw.manifest["after"] = True
        manifest = verify(root)
        assert all(not Path(rel).name.startswith(".") for rel in manifest["files"]), manifest["files"]
        assert not [p for p in root.rglob(".*") if p.name.endswith((".next", ".staging", ".link"))]
        assert _loads(root) == 40
    assert sum(rounds) > 0  # the kills did land after some complete rounds (i.e. mid-write at times)


LOCK_HOLDER = """
    import sys, time
    from malm.bundle import BundleWriter
    with BundleWriter(sys.argv[1]) as bw:
        bw.manifest["holder"] = "first"
        print("go", flush=True)
        time.sleep(float(sys.argv[2]))
        bw.manifest["holder_done"] = True
    print("done", flush=True)
"""


def test_two_writers_never_interleave(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(bundle, root)
    # The second writer is refused while the first holds the lock...
    first = _spawn(LOCK_HOLDER, str(root), "3")
    assert first.stdout is not None and first.stdout.readline().strip() == "go"
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="another malm process is writing"):
        with BundleWriter(root, timeout=0.3):
            pass
    assert time.monotonic() - t0 < 2.5
    # ...or waits for it, and then sees its committed manifest (never a mix of the two).
    with BundleWriter(root, timeout=20) as bw:
        assert bw.manifest.get("holder") == "first" and bw.manifest.get("holder_done") is True
        bw.manifest["second"] = True
    first.wait(timeout=10)
    m = verify(root)
    assert m["holder_done"] is True and m["second"] is True
    # A writer killed while holding the lock does not block the next one (flock dies with the process).
    holder = _spawn(LOCK_HOLDER, str(root), "30")
    _kill_after_start(holder, 0.05)
    with BundleWriter(root, timeout=2) as bw:
        assert "second" in bw.manifest


CKPT_WRITER = """
    import sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from malm.training import checkpoint as ck
    from malm.training.models.retrieval import RetrievalModel
    run = Path(sys.argv[1])
    loaded = ck.load_model(run, "last")
    model = loaded.model
    print("go", flush=True)
    step = int(loaded.meta["step"])
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        ck.save_weights(run, "last", model, {**loaded.meta, "step": step})
        print("done", step, flush=True)
"""


@pytest.mark.slow
def test_kill_during_checkpoint_save_and_resume(tmp_path: Path) -> None:
    from _tiny_run import make_dataset, tiny_config

    from malm.training import checkpoint as ck

    data = make_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=4)
    cfg = tiny_config(tmp_path / "cfg.json", epochs=2)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    malm = [sys.executable, "-m", "malm.cli", "train", "--data", str(data), "--preset", str(cfg), "--out", str(run),
            "--device", "cpu", "--save-every", "1"]
    # 1) training killed mid-run (once a resumable state exists) resumes and finishes.
    proc = subprocess.Popen(malm, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (run / "last.state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed, "training finished before a resumable state was written"
    state_step = json.loads((run / "last.state.json").read_text())["step"]
    res = subprocess.run([*malm, "--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    final = json.loads((run / "last.json").read_text())
    assert final["step"] > state_step and final["epoch"] == 2, final
    assert ck.load_model(run, "last").model is not None
    # 2) kill -9 during save_weights, at several points: `last` always loads, weights and metadata agree.
    for delay in (0.6,):
        _kill_after_start(_spawn(CKPT_WRITER, str(run)), delay)
        loaded = ck.load_model(run, "last")
        from safetensors import safe_open

        with safe_open(str(run / "last.safetensors"), framework="pt") as f:
            assert str(loaded.meta["step"]) == f.metadata()["step"]
