"""The on-device SDK: `Retriever.load(bundle).search(photo)` — numpy, Pillow, ONNX Runtime, hnswlib; no torch."""

from malm.edge_index.records import RecipeRecord
from malm.sdk.bundle_loader import Bundle, open_bundle
from malm.sdk.image_io import ImageInput, load_image
from malm.sdk.retriever import Hit, Retriever

__all__ = ["Bundle", "Hit", "ImageInput", "RecipeRecord", "Retriever", "load_image", "open_bundle"]
