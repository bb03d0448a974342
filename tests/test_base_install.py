"""`pip install .` with no extras, into a fresh venv: a query names the runtime extra to install; with
`[cpu]` (the README's x86 row) the on-device runtime answers with no torch and no onnx, as a device gets it. The other tests run inside the full environment, where a
stray torch import in the SDK would go unnoticed.

Slow (a venv and the base wheels: ~1-2 min on a quiet machine, ~5 min on the loaded 2-core one); needs the
package index pip is configured with (the project's offline mirror in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_bundle import make_bundle, save_photos

ROOT = Path(__file__).resolve().parent.parent
TRAIN_ONLY = {"torch", "onnx", "safetensors", "coremltools", "onnxscript"}


@pytest.mark.slow
def test_base_install_in_a_fresh_venv_answers_queries_without_torch(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    py, malm = venv / "bin" / "python", venv / "bin" / "malm"
    # The wheel of this checkout, built with this environment's setuptools (no build-time download), then
    # installed the way a device does: `pip install malm` with its base dependencies from the index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(ROOT)], check=True, env=env, timeout=300, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("malm-*.whl"))
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], env=env, timeout=900,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], env=env, capture_output=True,
                            text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"malm", "numpy", "hnswlib", "pillow", "typer"} <= names, names
    assert not (TRAIN_ONLY & names), TRAIN_ONLY & names
    # The base has no ONNX Runtime (it is the per-device extra): a query says which extra to install.
    assert "onnxruntime" not in names and "onnxruntime-gpu" not in names, names

    # Run from a folder outside the checkout, so the installed package is the one imported.
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    bundle = make_bundle(tmp_path / "bundle", 20)
    photos = save_photos(tmp_path / "photos", range(3, 5))
    bare = subprocess.run([str(malm), "query", str(photos[0]), "--bundle", str(bundle)], env=env, cwd=run_dir,
                          capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "malm[cpu]" in bare.stderr and "Traceback" not in bare.stderr, bare.stderr

    # The x86 CPU install of the README's device table.
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{wheel}[cpu]"], env=env, timeout=900,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import malm, sys; print(malm.__file__); "
                            "import malm.sdk, malm.edge_index; assert 'torch' not in sys.modules"],
                           env=env, cwd=run_dir, capture_output=True, text=True)
    assert where.returncode == 0 and str(venv) in where.stdout, where.stdout + where.stderr

    q = subprocess.run([str(malm), "query", str(photos[0]), str(photos[1]), "--bundle", str(bundle), "-k", "2",
                        "--json"], env=env, cwd=run_dir, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-3000:]
    results = json.loads(q.stdout)["results"]
    assert [r["hits"][0]["recipe_id"] for r in results] == ["rec0003", "rec0004"]
    assert subprocess.run([str(malm), "--help"], env=env, cwd=run_dir, capture_output=True).returncode == 0
