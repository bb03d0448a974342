"""The CPU features that decide which kernels ONNX Runtime runs (int8 speed hinges on VNNI / dotprod).

Stdlib only, no subprocess on Linux, so `malm doctor`, `Retriever.info()` and benchmarks/machine.py
can all call it cheaply. Linux reads /proc/cpuinfo; macOS asks sysctl; elsewhere the features are unknown
(reported as such, never guessed).
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# x86: the SIMD levels ORT's MLAS picks kernels by. ARM: asimd (= NEON on aarch64), asimddp (dot product,
# the int8 fast path), i8mm (int8 matrix multiply), sve, bf16.
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16")
ARM_FLAGS = ("neon", "asimd", "asimddp", "i8mm", "sve", "bf16")
CPU_FLAGS = X86_FLAGS + ARM_FLAGS

# macOS sysctl keys → the Linux flag names above (Apple silicon always has NEON and dotprod).
_SYSCTL = {
    "hw.optional.avx2_0": "avx2", "hw.optional.fma": "fma", "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512bw": "avx512bw", "hw.optional.avx512vnni": "avx512_vnni",
    "hw.optional.neon": "asimd", "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16",
}


@dataclass(frozen=True)
class CpuFeatures:
    machine: str  # platform.machine(): x86_64, aarch64, arm64, AMD64…
    model: str
    flags: tuple[str, ...]  # the ones in CPU_FLAGS that this CPU has
    source: str  # where they were read: "/proc/cpuinfo", "sysctl", or "unknown"
    hypervisor: bool = False
    raw_count: int = field(default=0, repr=False)  # how many flags the OS listed (0: nothing read)

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def int8_path(self) -> str:
        """Which int8 kernel family ONNX Runtime can use here, in words."""
        if not self.known:
            return "unknown (CPU features could not be read)"
        if self.has("amx_int8"):
            return "AMX int8 (and AVX-512 VNNI)"
        if self.has("avx512_vnni"):
            return "AVX-512 VNNI"
        if self.has("avx_vnni"):
            return "AVX-VNNI (256-bit)"
        if self.has("i8mm"):
            return "ARM i8mm (and dot product)"
        if self.has("asimddp"):
            return "ARM NEON dot product (sdot/udot)"
        if self.has("asimd") or self.has("neon"):
            return "ARM NEON without dot product (int8 is slow: fp32 may win)"
        if self.has("avx512bw"):
            return "AVX-512BW without VNNI"
        if self.has("avx2"):
            return "AVX2 without VNNI (u8×s8 via vpmaddubsw)"
        return "no SIMD int8 path found (int8 may be slower than fp32)"

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "model": self.model, "flags": list(self.flags), "source": self.source,
                "hypervisor": self.hypervisor, "int8_path": self.int8_path}


def _cpuinfo(text: str) -> tuple[str, set[str], bool]:
    """(model, flags, hypervisor) from the first processor block of /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    raw = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or ""
    return model, raw, "hypervisor" in raw


def parse_cpuinfo(text: str, machine: str = "") -> CpuFeatures:
    model, raw, hyper = _cpuinfo(text)
    flags = tuple(f for f in CPU_FLAGS if f in raw)
    return CpuFeatures(machine or platform.machine(), model or platform.processor() or "?", flags,
                       "/proc/cpuinfo" if raw else "unknown", hyper, len(raw))


def _sysctl() -> CpuFeatures | None:
    try:
        out = subprocess.run(["sysctl", *_SYSCTL, "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    raw: set[str] = set()
    model = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "machdep.cpu.brand_string":
            model = value
        elif _SYSCTL.get(key) and value == "1":
            raw.add(_SYSCTL[key])
    if not raw and not model:
        return None
    return CpuFeatures(platform.machine(), model or "?", tuple(f for f in CPU_FLAGS if f in raw), "sysctl",
                       False, len(raw))


def cpu_features(cpuinfo: str | Path = Path("/proc/cpuinfo")) -> CpuFeatures:
    """This machine's features (`cpuinfo` may be a path or the text itself, for tests)."""
    if isinstance(cpuinfo, str):
        return parse_cpuinfo(cpuinfo)
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if text:
        return parse_cpuinfo(text)
    if platform.system() == "Darwin":
        found = _sysctl()
        if found is not None:
            return found
    return CpuFeatures(platform.machine(), platform.processor() or "?", (), "unknown")
