"""Image preprocessing shared by training (eval transform) and the on-device SDK.

Numpy + Pillow only, driven by a `PreprocessConfig` that the bundle's manifest stores, so the
device sees exactly the pixels the model was evaluated on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

ALGORITHM = "malm-preprocess-1"  # docs/bundle-format.md, "Image preprocessing"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 224  # side of the square crop the encoder sees
    resize: int = 256  # shorter side before cropping (Recipe1M: 256 → crop 224)
    crop: str = "center"  # "center" at eval; training uses a random crop of the same size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    max_pixels: int = field(default=64_000_000)  # refuse decompression bombs above this
    # What docs/bundle-format.md specifies beyond the numbers above; the defaults are what the SDK always did, so a
    # manifest written before these keys existed means exactly these values.
    algorithm: str = ALGORITHM  # the named sequence of steps (decode, orient, RGB, aspect, resize, crop, normalize)
    exif_orientation: bool = True  # apply the photo's EXIF/XMP orientation tag
    alpha_background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited on this colour
    max_aspect: float = 4.0  # longer/shorter side kept before resizing (see limit_aspect)
    jpeg_draft: bool = True  # JPEGs may be decoded at 1/2, 1/4, 1/8 scale when that is exact (see draft_scale)
    layout: str = "NCHW"
    dtype: str = "float32"
    channels: str = "RGB"

    def __post_init__(self) -> None:
        # A manifest is untrusted input: a string or bool here would fail later and far from the cause.
        for name in ("size", "resize", "max_pixels"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"preprocess: {name} must be a positive integer, got {value!r}")
        if self.size <= 0 or self.resize < self.size:
            raise ValueError(f"preprocess: need 0 < size <= resize, got size={self.size} resize={self.resize}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"preprocess: unknown interpolation {self.interpolation!r}; one of {sorted(_INTERPOLATIONS)}")
        if self.crop not in ("center",):
            raise ValueError(f"preprocess: unknown crop {self.crop!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("preprocess: mean and std need 3 values, std > 0")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"preprocess: mean and std must be finite, got {self.mean} / {self.std}")
        self._check_spec_fields()

    def _check_spec_fields(self) -> None:
        """The keys docs/bundle-format.md added: a value this malm does not implement is refused, never guessed."""
        fixed = {"algorithm": ALGORITHM, "layout": "NCHW", "dtype": "float32", "channels": "RGB"}
        for name, supported in fixed.items():
            if getattr(self, name) != supported:
                raise ValueError(f"preprocess: {name} {getattr(self, name)!r} is not supported by this malm "
                                 f"(it implements {supported!r})")
        for name in ("exif_orientation", "jpeg_draft"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"preprocess: {name} must be true or false, got {getattr(self, name)!r}")
        bg = self.alpha_background
        if len(bg) != 3 or any(type(v) is not int or not 0 <= v <= 255 for v in bg):
            raise ValueError(f"preprocess: alpha_background must be 3 integers in 0..255, got {bg!r}")
        if (isinstance(self.max_aspect, bool) or not isinstance(self.max_aspect, (int, float))
                or not math.isfinite(self.max_aspect) or not 1.0 <= self.max_aspect <= 1e6):
            raise ValueError(f"preprocess: max_aspect must be a number in [1, 1e6], got {self.max_aspect!r}")

    @property
    def draft_side(self) -> int:
        """The shorter side a JPEG may be draft-decoded down to (0: decode in full)."""
        return self.resize if self.jpeg_draft else 0

    @classmethod
    def for_size(cls, size: int, **kw: Any) -> PreprocessConfig:
        """The Recipe1M recipe (resize 256, crop 224) scaled to another input size."""
        return cls(size=size, resize=round(size * 256 / 224), **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["alpha_background"] = list(self.alpha_background)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        if isinstance(known.get("alpha_background"), list):
            known["alpha_background"] = tuple(known["alpha_background"])
        return cls(**known)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255),
           exif_orientation: bool = True) -> Image.Image:
    """Any PIL mode (L, LA, RGBA, P, CMYK, I;16, …) to RGB; alpha is composited on `background` (white).

    EXIF orientation is applied first so a phone photo is upright.
    """
    if exif_orientation:
        image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = max(float(arr.max()), 1.0)
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        arr = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode == "La":  # premultiplied: Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
    return image.convert("RGB")


DRAFT_SCALES = (8, 4, 2)  # what libjpeg's DCT-domain scaling offers (Pillow's `draft`)


def draft_scale(width: int, height: int, min_side: int) -> int:
    """The largest JPEG DCT scale (8, 4, 2; 1 = none) that keeps the shorter side >= `min_side` and divides
    both sides exactly.

    Exactly: libjpeg rounds a scaled side up, so a side that is not a multiple of the scale would map a
    slightly larger picture onto the decoded pixels and shift the crop by a fraction of a pixel (visible
    at sharp edges). Camera sizes (4032x3024, 4000x3000, 3264x2448, 1920x1080…) are multiples of 8.
    """
    if min_side <= 0:
        return 1
    for scale in DRAFT_SCALES:
        if width % scale == 0 and height % scale == 0 and min(width, height) // scale >= min_side:
            return scale
    return 1


def draft_jpeg(image: Image.Image, min_side: int) -> Image.Image:
    """Let libjpeg decode a not-yet-loaded JPEG at 1/2, 1/4 or 1/8 scale (DCT-domain downscaling).

    A 12 MP phone photo (4032x3024) needs only a 256-pixel shorter side: decoding it at 1/8 (504x378)
    skips most of the inverse DCT and all the full-size colour conversion and resizing. The picture
    covers exactly the same scene (`draft_scale` only takes exact divisors), so the crop that follows is the
    same crop; the pixels differ only by the low-pass filter (an 8x8 DCT block average instead of the
    resize's wider triangle filter). The shorter side is orientation-independent, so this is safe before
    the EXIF transpose. Any other format, or an image already decoded, is returned unchanged.
    """
    if image.format != "JPEG":
        return image
    scale = draft_scale(image.width, image.height, min_side)
    if scale > 1:
        image.draft("RGB", (image.width // scale, image.height // scale))
    return image


def resize_shorter(image: Image.Image, side: int, interpolation: str) -> Image.Image:
    w, h = image.size
    if min(w, h) == side:
        return image
    if w <= h:
        new = (side, max(side, round(h * side / w)))
    else:
        new = (max(side, round(w * side / h)), side)
    return image.resize(new, _INTERPOLATIONS[interpolation])


MAX_ASPECT = 4.0


def limit_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Center-crop a very long image (e.g. 1x20000) to `max_aspect` before resizing.

    Only the central square survives the center crop anyway; without this, resizing the shorter side
    up would allocate a gigantic image. Ordinary photos (aspect <= 4) are untouched.
    """
    w, h = image.size
    short, long = min(w, h), max(w, h)
    if long <= short * max_aspect:
        return image
    keep = max(1, round(short * max_aspect))
    off = (long - keep) // 2
    box = (off, 0, off + keep, h) if w > h else (0, off, w, off + keep)
    return image.crop(box)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    left = (width - size) // 2
    top = (height - size) // 2
    return left, top, left + size, top + size


def normalize(rgb_uint8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """HWC uint8 → CHW float32, scaled to [0, 1] then normalized by mean/std."""
    x: np.ndarray = rgb_uint8.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The deployment (and evaluation) transform: RGB → resize shorter side → center crop → normalize."""
    rgb = limit_aspect(to_rgb(image, cfg.alpha_background, cfg.exif_orientation), cfg.max_aspect)
    rgb = resize_shorter(rgb, cfg.resize, cfg.interpolation)
    rgb = rgb.crop(center_crop_box(*rgb.size, cfg.size))
    return normalize(np.asarray(rgb, dtype=np.uint8), cfg)
