"""kill -9 in the middle of writes: the previous version (or the new one) stays loadable and complete.

Each test runs a writer in a subprocess that repeats its write in a loop. A hook in the child wraps
`os.replace` (every commit step of malm's writers is one: atomic file writes, swaps, the manifest) and
freezes the child just before or just after its N-th call; the parent then SIGKILLs it. So each kill lands
at a known point *inside* a commit (not, by luck of timing, before the first one), and the test knows which
version (old or new) must be on disk afterwards and checks exactly that one. Two writers on one bundle are
serialized by `BundleWriter`'s lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _sdk_bundle import DIM, image_onnx, make_bundle

from malm.bundle import BundleWriter, read_manifest, verify
from malm.errors import BundleError

TESTS = Path(__file__).parent
ROOT = TESTS.parent

# Prepended to a writer: freeze at the N-th os.replace (argv[-2]), "before" or "after" it (argv[-1]).
KILL_HOOK = """
    import os, sys, time
    _REAL_REPLACE, _AT, _WHEN, _N = os.replace, int(sys.argv[-2]), sys.argv[-1], [0]
    def _replace(src, dst, *a, **k):
        _N[0] += 1
        if _N[0] == _AT and _WHEN == "before":
            print("at", _N[0], _WHEN, dst, flush=True)
            time.sleep(600)
        _REAL_REPLACE(src, dst, *a, **k)
        if _N[0] == _AT and _WHEN == "after":
            print("at", _N[0], _WHEN, dst, flush=True)
            time.sleep(600)
    os.replace = _replace
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _kill_at(code: str, *args: str, at: int, when: str, timeout: float = 120) -> tuple[list[str], str]:
    """Run writer `code` with the kill hook; SIGKILL it once it is frozen at os.replace #`at` (`when` it).

    Returns the writer's "done ..." lines (its completed rounds) and the hook's "at ..." line. Fails if the
    writer exits or never reaches that point: then the kill would not have landed inside a commit.
    """
    proc = _spawn(textwrap.dedent(KILL_HOOK) + textwrap.dedent(code), *args, str(at), when)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    done: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"writer never reached os.replace #{at} ({when}) in {timeout} s; done: {done}")
            if line is None:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"writer exited before os.replace #{at} ({when}); done: {done}\n{err[-2000:]}")
            if line.startswith("done"):
                done.append(line)
            if line.startswith("at "):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.returncode  # killed while frozen, not exited by itself
    return done, line


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


# One add (40 -> 340 recipes) then one remove (-> 40) makes 9 + 9 os.replace calls: the staged index file,
# the A/B index and store, the staged token arrays, the A/B token arrays, the manifest (#8 and #17), then the
# model card (README.md, #9 and #18), which is written after the manifest and never decides the version.
# (point, before/after, recipes the bundle must hold afterwards, completed rounds the writer reported)
INDEX_KILLS = (
    (2, "before", 40, 0),  # the new index file not yet swapped in
    (4, "after", 40, 0),  # index + store swapped in under their new names, token arrays staged
    (8, "before", 40, 0),  # every new file in place, the manifest not yet: the old version
    (8, "after", 340, 0),  # manifest committed, old files not yet cleaned up: the new version
    (16, "after", 340, 1),  # inside the remove's commit, its manifest not yet written
    (17, "after", 40, 1),  # the remove's manifest committed
)
MANIFEST_POINTS = {8, 17}


@pytest.mark.parametrize(("at", "when", "expected", "rounds"), INDEX_KILLS,
                         ids=[f"{w}{a}" for a, w, _, _ in INDEX_KILLS])
def test_kill_during_index_save_keeps_a_loadable_index(bundle: Path, tmp_path: Path, at: int, when: str,
                                                      expected: int, rounds: int) -> None:
    root = tmp_path / "b"
    shutil.copytree(bundle, root)
    done, where = _kill_at(INDEX_WRITER, str(root), str(DIM), at=at, when=when)
    assert len(done) == rounds, (done, where)
    assert where.endswith("/manifest.json") == (at in MANIFEST_POINTS), where  # the count is what we think
    # Proof the kill landed inside an update: its staging dir is still there (removed only after the commit).
    assert list(root.glob(".index-staging-*")), where
    n = _loads(root)  # verifies every sha256, then opens index + store
    assert n == expected, (where, n)  # exactly the version committed before the kill, never a mix
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


# Round 0 (encoders not in the base bundle's manifest yet): int8 swapped in (#1), report (#2), the manifest
# naming fp32's new version at its hidden `.next` name (#3), fp32 swapped in (#4), the final manifest (#5).
# Round 1 replaces live files only: report staged (#6), `.next` manifest (#7), fp32, int8, report swapped
# (#8-#10), the final manifest (#11). (point, before/after, round the bundle must hold, completed rounds)
EXPORT_KILLS = (
    (2, "after", None, 0),  # new files written, the manifest not yet: the original bundle
    (3, "before", None, 0),
    (3, "after", 0, 0),  # between commit's two manifests: the new version under `.next` names
    (4, "after", 0, 0),
    (7, "before", 0, 1),
    (9, "after", 1, 1),  # round 1 half swapped in
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("at", "when", "expected", "rounds"), EXPORT_KILLS,
                         ids=[f"{w}{a}" for a, w, _, _ in EXPORT_KILLS])
def test_kill_during_export_keeps_a_complete_bundle(bundle: Path, tmp_path: Path, at: int, when: str,
                                                    expected: int | None, rounds: int) -> None:
    a = image_onnx(tmp_path / "enc" / "a.onnx", seed=1)
    b = image_onnx(tmp_path / "enc" / "b.onnx", seed=2)
    root = tmp_path / "b"
    shutil.copytree(bundle, root)
    original_fp32 = _sha(root / "encoders/image_fp32.onnx")
    done, where = _kill_at(EXPORT_WRITER, str(root), str(a), str(b), at=at, when=when)
    assert len(done) == rounds, (done, where)
    assert _loads(root) == 40  # verifies every sha256 first
    manifest = read_manifest(root)
    assert manifest.get("round") == expected, (where, manifest.get("round"))
    # The encoder the manifest names is the one of that round, with every file it names present.
    fp32 = manifest["encoders"]["image_fp32"]["file"]
    assert _sha(root / fp32) == (original_fp32 if expected is None else _sha((a, b)[expected])), where
    for entry in manifest["encoders"].values():
        assert (root / entry["file"]).exists()
    # The next writer finishes or discards what the killed one left, and the bundle is clean again.
    with BundleWriter(root) as bw:
        bw.manifest["after"] = True
    manifest = verify(root)
    assert manifest.get("round") == expected and manifest["after"] is True
    assert all(not Path(rel).name.startswith(".") for rel in manifest["files"]), manifest["files"]
    assert not [p for p in root.rglob(".*") if p.name.endswith((".next", ".staging", ".link"))]
    assert _loads(root) == 40


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
    deadline = time.monotonic() + 300  # a loaded 2-core machine takes minutes to import torch and start
    while not (run / "last.state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed, "training finished before a resumable state was written"
    assert (run / "last.state.json").exists(), "no resumable state within 300 s: " + (proc.stderr.read() if proc.stderr else "")[-2000:]
    state_step = json.loads((run / "last.state.json").read_text())["step"]
    res = subprocess.run([*malm, "--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    final = json.loads((run / "last.json").read_text())
    assert final["step"] > state_step and final["epoch"] == 2, final
    assert ck.load_model(run, "last").model is not None
    # 2) kill -9 inside save_weights, at each of its points: weights (#1) then JSON (#2), each an atomic
    # replace. `last` always loads, with weights and step from the same save: the old one or the new one.
    from safetensors import safe_open

    before = ck.load_model(run, "last")
    step0 = int(before.meta["step"])
    p0 = next(iter(before.model.parameters())).detach().clone()
    shutil.copytree(run, tmp_path / "base")
    for at, when, saved in ((1, "before", 0), (1, "after", 1), (2, "after", 1)):
        shutil.rmtree(run)
        shutil.copytree(tmp_path / "base", run)  # every kill starts from the same saved state
        done, where = _kill_at(CKPT_WRITER, str(run), at=at, when=when, timeout=180)
        assert done == [], (done, where)  # killed inside the first save, before it returned
        loaded = ck.load_model(run, "last")
        with safe_open(str(run / "last.safetensors"), framework="pt") as f:
            assert str(loaded.meta["step"]) == f.metadata()["step"]
        assert int(loaded.meta["step"]) == step0 + saved, (where, loaded.meta["step"])
        p = next(iter(loaded.model.parameters())).detach()
        assert torch_allclose(p, p0 + 0.01 * saved), where  # the weights of that step, not the other save's


def torch_allclose(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return bool(torch.allclose(a, b, atol=1e-6))
