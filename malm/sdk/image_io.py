"""Decode whatever an app hands the SDK into a PIL image, or a clear `ImageError`.

Accepted: a path (str / PathLike), encoded bytes, a PIL image, or an HWC (or HW) uint8 array.
Formats: whatever Pillow reads (JPEG, PNG, WebP, BMP, GIF, TIFF…), and HEIC / HEIF (iPhone photos) when
the `heic` extra (pillow-heif) is installed. JPEGs are decoded in draft mode at the smallest DCT scale the
preprocessing needs (`min_side`), which is most of a phone photo's query time otherwise.
Orientation (EXIF), mode conversion and normalization happen in `malm.preprocess.preprocess`.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from malm.errors import ImageError
from malm.preprocess import draft_jpeg

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


SUPPORTED = "JPEG, PNG, WebP, BMP, GIF, TIFF, and HEIC/HEIF with pip install 'malm[heic]'"
HEIC_HINT = "HEIC/HEIF photos need the heic extra: pip install 'malm[heic]' (pillow-heif)"
# ISO-BMFF brands (bytes 8..12, after 'ftyp') of HEIF stills and sequences; AVIF is told apart.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_heif_lock = threading.Lock()
_heif_state: list[bool] = []  # [registered?] once tried


def sniff(head: bytes) -> str | None:
    """The kind of a file Pillow may not read, from its first bytes: 'heif', 'avif', 'pdf', 'svg', 'jxl'."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _HEIF_BRANDS:
            return "heif"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.lstrip()[:5] in (b"<?xml", b"<svg ") or head.lstrip().startswith(b"<svg"):
        return "svg"
    if head.startswith(b"\xff\x0a") or head[4:8] == b"JXL ":
        return "jxl"
    return None


def heif_available() -> bool:
    """Register pillow-heif's opener with Pillow once; False when the `heic` extra is not installed."""
    with _heif_lock:
        if not _heif_state:
            try:
                import pillow_heif
            except ImportError:
                _heif_state.append(False)
            else:
                pillow_heif.register_heif_opener()
                _heif_state.append(True)
        return _heif_state[0]


def _head(fp: io.BytesIO | Path) -> bytes:
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()[:32]
    try:
        with open(fp, "rb") as f:
            return f.read(32)
    except OSError:
        return b""  # Image.open will raise the real error with its reason


def _unsupported(name: str, kind: str | None) -> ImageError:
    what = {"heif": None, "avif": "AVIF", "pdf": "a PDF document", "svg": "an SVG drawing",
            "jxl": "JPEG XL"}.get(kind or "")
    if what:
        return ImageError(f"image {name}: {what} is not a supported image format (supported: {SUPPORTED})")
    return ImageError(f"image {name}: not a recognized image format (supported: {SUPPORTED})")


def load_image(src: ImageInput, max_pixels: int = 64_000_000, min_side: int = 0) -> Image.Image:
    """Open and fully decode `src` (lazy decoding would defer errors to the encoder).

    min_side: the shorter side the preprocessing needs (the bundle's `preprocess.resize`); a JPEG larger
    than twice that is decoded at 1/2, 1/4 or 1/8 scale instead of in full. 0 decodes in full.
    """
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
    kind = sniff(_head(fp))
    if kind == "heif" and not heif_available():
        raise ImageError(f"image {name}: {HEIC_HINT}")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit decides; PIL's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
            _check_pixels(image, name, max_pixels)
            draft_jpeg(image, min_side)
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {name}: refused, too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise _unsupported(name, kind) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"image {name}: cannot be decoded ({e})") from None
    return image
