"""Export: distil the edge student, export to ONNX / int8 QDQ / TensorRT / CoreML, write the bundle.

Heavy libraries (torch, onnx, onnxruntime, coremltools, tensorrt) are imported inside the functions
that need them; importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any

from malm.export.registry import TARGETS, ExportOptions, describe, require

__all__ = ["TARGETS", "ExportOptions", "ExportRequest", "describe", "require", "run_export"]


def __getattr__(name: str) -> Any:
    if name in ("ExportRequest", "run_export"):
        # on use only: keeps Pillow, numpy out of the command line's start
        from malm.export import exporter

        return getattr(exporter, name)
    raise AttributeError(name)
