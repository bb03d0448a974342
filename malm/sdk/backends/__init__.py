"""Image-encoder backends behind one interface (`base.ImageBackend`), and the choice between them.

`registry` holds the table of backends and variants (light: the CLI reads it at start-up); `choice`
picks a backend and an image-encoder variant for a bundle on this device and builds it; `ort`,
`tensorrt`, `coreml` are the backends. The names below load on first use, so that importing the table
does not load ONNX Runtime's wrapper or the bundle reader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from malm.sdk.backends.registry import BACKEND_CHOICES, BACKENDS, IMAGE_ENCODERS, VARIANTS, Backend

if TYPE_CHECKING:
    from malm.sdk.backends.base import EncoderOutput, ImageBackend
    from malm.sdk.backends.choice import (
        auto_order,
        candidates,
        choose_variant,
        create_backend,
        encoder_file,
        explain_variant,
        targets,
        variants_present,
    )
    from malm.sdk.backends.ort import OrtImageBackend, OrtSession, available_providers, select_providers

_LAZY = {
    "EncoderOutput": "base", "ImageBackend": "base",
    "OrtImageBackend": "ort", "OrtSession": "ort", "available_providers": "ort", "select_providers": "ort",
    "auto_order": "choice", "candidates": "choice", "choose_variant": "choice", "create_backend": "choice",
    "encoder_file": "choice", "explain_variant": "choice", "targets": "choice", "variants_present": "choice",
}
__all__ = ["BACKENDS", "BACKEND_CHOICES", "IMAGE_ENCODERS", "VARIANTS", "Backend", "EncoderOutput", "ImageBackend",
           "OrtImageBackend", "OrtSession", "auto_order", "available_providers", "candidates", "choose_variant",
           "create_backend", "encoder_file", "explain_variant", "select_providers", "targets", "variants_present"]


def __getattr__(name: str) -> Any:
    # Deferred: these import numpy and the bundle reader, which `malm --help` does not need.
    if name not in _LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"malm.sdk.backends.{_LAZY[name]}"), name)
