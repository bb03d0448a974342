"""Timing helpers: repeat a call, keep every sample, report medians and p95 (never a single run)."""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Milliseconds per call over `n` timed repetitions."""

    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float

    @classmethod
    def of(cls, samples_s: list[float]) -> Stats:
        a = np.asarray(samples_s, dtype=np.float64) * 1e3
        return cls(n=len(a), p50_ms=float(np.median(a)), p95_ms=float(np.percentile(a, 95)),
                   mean_ms=float(a.mean()), min_ms=float(a.min()))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "p50_ms": round(self.p50_ms, 4), "p95_ms": round(self.p95_ms, 4),
                "mean_ms": round(self.mean_ms, 4), "min_ms": round(self.min_ms, 4)}


def measure(fn: Callable[[], Any], *, min_time: float = 1.0, min_reps: int = 5, max_reps: int = 1000,
            warmup: int = 2) -> Stats:
    """Time `fn()` until both `min_reps` calls and `min_time` seconds are done (or `max_reps`).

    Warm-up calls are dropped (first-call allocation, lazy kernel selection); the garbage collector is
    paused while timing so a collection does not land in one sample.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() - start < min_time):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return Stats.of(samples)


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Limit torch (when already imported) and BLAS/OpenMP pools to `n` threads for the block.

    ONNX Runtime and the index libraries take their thread count per call/session instead.
    """
    torch = sys.modules.get("torch")
    old_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy then uses its default pool: recorded in the machine info's libraries
        limiter: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=n)
    try:
        with limiter:
            yield
    finally:
        if torch is not None and old_torch is not None:
            torch.set_num_threads(old_torch)


class Clock:
    """Wall time of a section, for the report and the time budget."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
