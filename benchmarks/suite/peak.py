"""What this CPU can do: measured fp32 matrix-multiply GFLOP/s, the ceiling encoder FLOP rates are read against.

A square sgemm is close to the best case for any dense kernel (convolutions and attention lower to
it), so `achieved / peak` says how much of the machine an encoder uses. Measured, not from a spec
sheet: a shared or virtualised CPU runs below its nominal peak.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.suite.context import Context
from benchmarks.suite.timing import measure, thread_limit


def _gflops(n: int, seconds: float) -> float:
    return 2.0 * n**3 / seconds / 1e9


def numpy_sgemm(n: int, threads: int, min_time: float) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with thread_limit(threads):
        st = measure(lambda: a @ b, min_time=min_time, min_reps=3, warmup=1)
    return _gflops(n, st.min_ms / 1e3)


def torch_sgemm(n: int, threads: int, min_time: float) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    with thread_limit(threads), torch.inference_mode():
        st = measure(lambda: torch.mm(a, b), min_time=min_time, min_reps=3, warmup=1)
    return _gflops(n, st.min_ms / 1e3)


def run(ctx: Context) -> dict[str, Any]:
    n = 512 if ctx.options.quick else 1536
    min_time = 0.2 if ctx.options.quick else 1.0
    out: dict[str, Any] = {"matrix": n, "method": f"fp32 {n}x{n} matmul, best of repeated runs", "gflops": {}}
    t0 = time.perf_counter()
    for threads in sorted(set(ctx.options.threads)):
        row = {"numpy": round(numpy_sgemm(n, threads, min_time), 1)}
        try:
            row["torch"] = round(torch_sgemm(n, threads, min_time), 1)
        except ImportError:
            pass
        out["gflops"][str(threads)] = row
        ctx.log(f"peak: {threads} thread(s): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in row.items()))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.cache["peak"] = out
    return out


def peak_gflops(peak: dict[str, Any] | None, threads: int) -> float | None:
    """The best measured sgemm rate at `threads` threads, or None when the peak section did not run."""
    if not peak or "gflops" not in peak:
        return None
    row = peak["gflops"].get(str(threads))
    return max(row.values()) if row else None
