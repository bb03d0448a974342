"""What this device offers the SDK, and what the SDK chose: the facts behind `malm doctor` and `Retriever.info()`.

Versions come from package metadata and module specs, so nothing heavy (tensorrt, coremltools) is
imported just to be reported; ONNX Runtime is imported because its providers are only known at run time.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from malm.cpu_features import cpu_features
from malm.errors import MalmError
from malm.native_build import hnswlib_build
from malm.sdk.backends.ort import import_onnxruntime, select_providers
from malm.sdk.backends.registry import BACKENDS

# Distributions that install the `onnxruntime` module: more than one at a time overwrite each other's files.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "onnxruntime-silicon")
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-libs", "tensorrt-cu12-libs")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def onnxruntime_info() -> dict[str, Any]:
    """Installed ONNX Runtime distributions, its version and execution providers, and what is wrong if anything."""
    dists = {d: v for d in ORT_DISTRIBUTIONS if (v := _version(d))}
    out: dict[str, Any] = {"distributions": dists, "version": None, "providers_available": [],
                           "provider_order": [], "error": None}
    try:
        ort = import_onnxruntime()
    except MalmError as e:
        out["error"] = str(e)
        return out
    out["version"] = getattr(ort, "__version__", None)
    out["providers_available"] = list(ort.get_available_providers())
    out["provider_order"] = select_providers(out["providers_available"])
    if len(dists) > 1:
        out["error"] = (f"several ONNX Runtime packages are installed ({', '.join(sorted(dists))}): they overwrite "
                        "each other and GPU providers can vanish; keep one (pip uninstall the others, then "
                        "reinstall the one that fits: 'malm[cpu]' or 'malm[gpu]')")
    return out


def tensorrt_info(ort_providers: list[str]) -> dict[str, Any]:
    dists = {d: v for d in TENSORRT_DISTRIBUTIONS if (v := _version(d))}
    # JetPack installs the tensorrt module through apt (no pip metadata): find it by its spec.
    module = importlib.util.find_spec("tensorrt") is not None
    return {"python_module": module, "distributions": dists,
            "ort_provider": "TensorrtExecutionProvider" in ort_providers}


def coreml_info(ort_providers: list[str]) -> dict[str, Any]:
    return {"macos": platform.system() == "Darwin", "coremltools": _version("coremltools"),
            "ort_provider": "CoreMLExecutionProvider" in ort_providers}


def backends_info() -> dict[str, dict[str, Any]]:
    """Each row of the backend table: whether its Python modules are installed, and what to install if not."""
    return {name: {"available": row.available(), "requires": list(row.requires), "description": row.description,
                   "install": None if row.available() else row.install} for name, row in BACKENDS.items()}


def image_formats() -> dict[str, Any]:
    """Photo formats beyond Pillow's own: HEIC needs the `heic` extra."""
    from PIL import features

    return {"pillow": _version("Pillow"), "jpeg_draft": True, "webp": bool(features.check("webp")),
            "heic": _version("pillow-heif")}


def gpu_hints() -> dict[str, Any]:
    """Signs of an NVIDIA GPU without asking CUDA (a Jetson has /etc/nv_tegra_release)."""
    jetson = Path("/etc/nv_tegra_release").exists()
    nvidia = jetson or Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
    return {"nvidia_gpu": nvidia, "jetson": jetson}


def problems(report: dict[str, Any]) -> list[str]:
    """What the user should fix, in words, from a `runtime_report`."""
    out: list[str] = []
    if (report.get("hnswlib_build") or {}).get("advice"):
        out.append(report["hnswlib_build"]["advice"])
    ort = report["onnxruntime"]
    if ort["error"]:
        out.append(ort["error"])
    providers = ort["providers_available"]
    gpu = report["gpu"]
    if gpu["nvidia_gpu"] and ort["version"] and "CUDAExecutionProvider" not in providers:
        where = "a Jetson: install NVIDIA's JetPack onnxruntime-gpu wheel" if gpu["jetson"] else \
            "pip uninstall onnxruntime, then pip install 'malm[gpu]'"
        out.append(f"an NVIDIA GPU is present but ONNX Runtime {ort['version']} has no CUDA provider, so queries "
                   f"run on the CPU; on {where}")
    if report["coreml"]["macos"] and ort["version"] and not report["coreml"]["ort_provider"]:
        out.append("macOS without ONNX Runtime's CoreML provider: install 'malm[cpu]' (the PyPI onnxruntime "
                   "wheel for macOS includes it)")
    return out


def runtime_report() -> dict[str, Any]:
    """Everything about this machine the SDK's choices depend on (no bundle needed)."""
    ort = onnxruntime_info()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_features().to_dict(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort,
        "tensorrt": tensorrt_info(ort["providers_available"]),
        "coreml": coreml_info(ort["providers_available"]),
        "backends": backends_info(),
        "gpu": gpu_hints(),
        "image_formats": image_formats(),
        "hnswlib": _version("hnswlib") or _version("chroma-hnswlib"),
        "hnswlib_build": hnswlib_build(),  # checked in a child process: a SIGILL there, not here
    }
    report["problems"] = problems(report)
    return report
