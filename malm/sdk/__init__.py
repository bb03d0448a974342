"""The on-device SDK: `Retriever.load(bundle).search(photo)` — numpy, Pillow, ONNX Runtime, hnswlib; no torch.

The names below load on first use, so that the command line can read the backend table
(`malm.sdk.backends.registry`) at start-up without loading numpy, Pillow and hnswlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from malm.edge_index.records import RecipeRecord
    from malm.sdk.bundle_loader import Bundle, open_bundle
    from malm.sdk.image_io import ImageInput, load_image
    from malm.sdk.retriever import Hit, Retriever

_LAZY = {"RecipeRecord": "malm.edge_index.records", "Bundle": "malm.sdk.bundle_loader",
         "open_bundle": "malm.sdk.bundle_loader", "ImageInput": "malm.sdk.image_io", "load_image": "malm.sdk.image_io",
         "Hit": "malm.sdk.retriever", "Retriever": "malm.sdk.retriever"}
__all__ = ["Bundle", "Hit", "ImageInput", "RecipeRecord", "Retriever", "load_image", "open_bundle"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(_LAZY[name]), name)
