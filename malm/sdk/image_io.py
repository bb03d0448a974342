"""Decode whatever an app hands the SDK into an upright RGB PIL image, or a clear `ImageError`.

Accepted: a path (str / PathLike), encoded bytes, a PIL image, or an HWC (or HW) uint8 array.
Orientation, mode conversion and normalization happen in `malm.preprocess.preprocess`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from malm.errors import ImageError

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]


def describe(src: object) -> str:
    """How an input is named in error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.width}x{src.height} {src.mode}>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    return f"<{type(src).__name__}>"


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image {name}: empty ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"image {name}: {w}x{h} = {w * h} pixels is above the limit of {max_pixels}")


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageError(f"image {name}: arrays must be uint8 (HWC RGB/RGBA or HW gray), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")
    raise ImageError(f"image {name}: arrays must be HWC with 1, 3 or 4 channels, or HW; got shape {arr.shape}")


def load_image(src: ImageInput, max_pixels: int = 64_000_000) -> Image.Image:
    """Open and fully decode `src` (lazy decoding would defer errors to the encoder)."""
    name = describe(src)
    if isinstance(src, Image.Image):
        _check_pixels(src, name, max_pixels)
        try:
            src.load()  # an Image.open()ed picture decodes lazily: fail here, naming it
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"image {name}: cannot be decoded ({e})") from None
        return src
    if isinstance(src, np.ndarray):
        if src.size == 0:
            raise ImageError(f"image {name}: empty array")
        image = _from_array(src, name)
        _check_pixels(image, name, max_pixels)
        return image
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: io.BytesIO | Path = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        fp = Path(src)
        if fp.is_dir():
            raise ImageError(f"image {name}: is a directory")
        if not fp.is_file():
            raise ImageError(f"image {name}: file not found")
    else:
        raise ImageError(f"image {name}: expected a path, bytes, a PIL image or a uint8 array")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit decides; PIL's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
            _check_pixels(image, name, max_pixels)
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {name}: refused, too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {name}: not a recognized image format") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"image {name}: cannot be decoded ({e})") from None
    return image
