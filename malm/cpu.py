"""The CPU we run on, in words, for the int8 gate and the SDK's self-check (reads `malm.cpu_features`).

x86 without VNNI multiplies u8*s8 with VPMADDUBSW, which sums pairs in 16 bits and can saturate; with
AVX512-VNNI / AVX-VNNI (or AMX) the products accumulate in 32 bits. ARM's kernels widen before summing.
"""

from __future__ import annotations

import functools
import platform

from malm.cpu_features import CpuFeatures, cpu_features

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


@functools.lru_cache(maxsize=1)
def _features() -> CpuFeatures:
    return cpu_features()


def int8_flags() -> list[str]:
    """The CPU features that decide ONNX Runtime's int8 kernels, present on this machine."""
    return [f for f in INT8_FLAGS if _features().has(f)]


def int8_may_saturate() -> bool:
    """x86 without VNNI/AMX: ONNX Runtime's U8S8 kernels sum u8*s8 pairs in 16 bits here."""
    flags = int8_flags()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def description() -> str:
    """E.g. 'AMD EPYC 7B13, x86_64, int8 features: avx2 (no VNNI)': for reports and warnings."""
    flags = int8_flags()
    note = " (no VNNI)" if int8_may_saturate() else ""
    return f"{_features().model}, {platform.machine()}, int8 features: {' '.join(flags) or 'none read'}{note}"


def fingerprint() -> str:
    """What identifies 'this machine' for remembered numeric checks: the CPU and its int8 features."""
    return f"{platform.machine()}|{_features().model}|{','.join(int8_flags())}"
