"""Which CPU the installed hnswlib was compiled for, found without importing it in this process.

hnswlib 0.8.0 is built from source by pip with `-march=native` (unless `HNSWLIB_NO_NATIVE=1`): an environment
built on an AVX-512 machine (a container image, a copied venv) dies with SIGILL at `import hnswlib` on an
AVX2-only CPU, before malm can say anything. `malm doctor` reports:

- the instruction set the extension uses, from its disassembly (`objdump`, when installed): zmm or AVX-512
  mask registers mean AVX-512, ymm means AVX/AVX2, neither means SSE only (a portable build);
- whether it runs here: a child process imports it and runs one query (a SIGILL there, not here).

Stdlib only.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
from typing import Any

from malm.cpu_features import cpu_features

REINSTALL = ("HNSWLIB_NO_NATIVE=1 pip install --force-reinstall --no-cache-dir --no-binary hnswlib "
             "'hnswlib>=0.8'")
# Imports hnswlib and runs one add + query: the code paths its SIMD distance functions are on.
PROBE = ("import numpy, hnswlib; i = hnswlib.Index(space='ip', dim=16); i.init_index(max_elements=8); "
         "i.add_items(numpy.ones((2, 16), 'float32')); i.knn_query(numpy.ones((1, 16), 'float32'), k=1)")
_AVX512 = re.compile(r"%zmm\d|%k[1-7]\b")
_AVX = re.compile(r"%ymm\d")


def classify_disassembly(text: str) -> str:
    """"avx512", "avx2" (AVX or AVX2: ymm registers) or "sse" from `objdump -d` output."""
    if _AVX512.search(text):
        return "avx512"
    if _AVX.search(text):
        return "avx2"
    return "sse"


def extension_path() -> str | None:
    spec = importlib.util.find_spec("hnswlib")  # finds the file, runs none of it
    return spec.origin if spec and spec.origin else None


def probe(code: str = PROBE, timeout: float = 60.0) -> tuple[bool | None, str]:
    """(whether `code` runs in a child process, what happened)."""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"could not run the check ({type(e).__name__})"
    if out.returncode == 0:
        return True, "imports and answers a query"
    if out.returncode == -signal.SIGILL:
        return False, "dies with SIGILL (illegal instruction): it was compiled for another CPU"
    last = (out.stderr.strip().splitlines() or ["no message"])[-1]
    return False, f"fails (exit status {out.returncode}: {last[:200]})"


def hnswlib_build(cpu_flags: set[str] | None = None, code: str = PROBE) -> dict[str, Any]:
    """What `malm doctor` shows under "hnswlib build"; `advice` is set when it cannot run here."""
    path = extension_path()
    info: dict[str, Any] = {"file": path, "instructions": "unknown", "source": None, "runs_here": None,
                            "check": "", "advice": None}
    if path is None:
        info["check"] = "hnswlib is not installed"
        return info
    objdump = shutil.which("objdump")
    if objdump and path.endswith((".so", ".pyd", ".dylib")):
        try:
            text = subprocess.run([objdump, "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                                  timeout=60).stdout
            info["instructions"], info["source"] = classify_disassembly(text), "objdump"
        except (OSError, subprocess.TimeoutExpired):
            pass
    else:
        info["source"] = "objdump not found: instruction set unknown"
    info["runs_here"], info["check"] = probe(code)
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    needs = {"avx512": "avx512f", "avx2": "avx2"}.get(info["instructions"])
    # The child's run decides; the CPU flags only speak when it could not run (ymm may be AVX without AVX2).
    if info["runs_here"] is False or (info["runs_here"] is None and needs and flags and needs not in flags):
        info["advice"] = (f"hnswlib uses {info['instructions']} instructions this CPU lacks or does not run here "
                          f"({info['check']}); rebuild it portable: {REINSTALL}")
    return info


def _cpu_flags() -> set[str]:
    try:
        return set(cpu_features().flags)
    except Exception:  # noqa: BLE001 - only a hint; the probe is what decides
        return set()
