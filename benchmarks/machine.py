"""What a benchmark ran on: recorded with every result, because timings mean nothing without it.

Stdlib only (library versions come from package metadata, so nothing heavy is imported here).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import malm.cpu_features as _cpu

# Distributions whose versions change the numbers (BLAS, runtimes, index libraries).
LIBRARIES = ("malm", "numpy", "torch", "onnx", "onnxruntime", "hnswlib", "faiss-cpu", "usearch", "Pillow",
             "threadpoolctl")
# CPU features that decide which kernels ONNX Runtime / MKL-DNN / OpenBLAS pick (int8 speed hinges on VNNI):
# read by the same light module `malm doctor` uses.
CPU_FLAGS = _cpu.CPU_FLAGS


def _cpuinfo() -> dict[str, str]:
    """First processor's fields from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    return info


def _meminfo_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit(repo: Path) -> str | None:
    """HEAD of the checkout the benchmark code came from, with '+dirty' when files differ (read-only git)."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Cores, CPU model and features, memory, OS, Python and library versions, load at the start."""
    cpu = _cpu.cpu_features()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        usable = os.cpu_count() or 1
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_flags": sorted(cpu.flags),
        "cpu_int8_path": cpu.int8_path,
        "hypervisor": cpu.hypervisor,
        "memory_bytes": _meminfo_bytes("MemTotal"),
        "memory_available_bytes": _meminfo_bytes("MemAvailable"),
        # Other work on the machine inflates every number: a high load here explains noisy results.
        "load_average": load,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "git_commit": _git_commit(Path(__file__).resolve().parent.parent),
        "gpu": _gpu_name(),
    }


def _gpu_name() -> str | None:
    """The CUDA device name if torch is already imported and sees one (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install must not stop a CPU benchmark
        return None


def summary_line(info: dict[str, Any]) -> str:
    mem = info.get("memory_bytes")
    mem_s = f"{mem / 2**30:.0f} GiB" if mem else "? GiB"
    libs = info.get("libraries", {})
    lib_s = ", ".join(f"{k} {v}" for k, v in libs.items() if v and k in ("torch", "onnxruntime", "hnswlib", "numpy"))
    return (f"{info.get('cpu_model')} ({info.get('cpu_usable')} usable cores, {mem_s}, "
            f"{' '.join(info.get('cpu_flags', [])) or 'no SIMD flags read'}); {lib_s}")
