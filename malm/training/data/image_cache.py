"""Every photo decoded and resized once into a uint8 memmap, so a training item costs a slice, not a JPEG decode.

    images = prepare_images(prepared, PreprocessConfig.for_size(224))   # built once, then reused
    split = images.split("train")        # split.pixels(row, k) -> uint8 [R, R, 3] (R = cfg.resize)

Layout, inside the prepared cache (it is rebuilt with it, and dropped with it):

    <cache>/images-<R>-<interpolation>/manifest.json     what was built from what (written last)
    <cache>/images-<R>-<interpolation>/<split>/pixels.npy   uint8 [M, R, R, 3]
    <cache>/images-<R>-<interpolation>/<split>/offsets.npy  int64 [N+1]: photos of recipe row i are rows
                                                            offsets[i]:offsets[i+1] of pixels.npy

Each photo goes through the evaluation transform up to the crop (RGB, `limit_aspect`, shorter side to R)
and keeps the R×R square whose centred `size` crop is exactly `preprocess()`'s centre crop, so evaluation
from the cache gives the same pixels as from the file. Training crops its random `size` window inside
that square (the old path could also reach the far ends of a wide photo). The train split keeps every
photo of a recipe; val/test keep the first (the only one evaluation reads). At 224 px a photo takes
192 KiB: Recipe1M's ~620k training photos need ~120 GB of disk.

Built in a temp folder and renamed into place under the cache's lock, like the recipe cache; decoding
runs on a thread pool (Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import fsync_dir, give_default_mode, write_text_atomic
from malm.errors import MalmError
from malm.preprocess import PreprocessConfig, limit_aspect, resize_shorter
from malm.recipe1m import SPLITS
from malm.training.data.prepare import PreparedData, _lock

IMAGE_CACHE_FORMAT = 1
_BLOCK = 256  # photos decoded per thread-pool round (bounds memory)


def square_box(width: int, height: int, side: int, size: int) -> tuple[int, int, int, int]:
    """The side×side box whose centred size×size crop is `center_crop_box(width, height, size)`."""
    inner = (side - size) // 2
    left = min(max(0, (width - size) // 2 - inner), width - side)
    top = min(max(0, (height - size) // 2 - inner), height - side)
    return left, top, left + side, top + side


def decode_square(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    """One photo -> uint8 [R, R, 3] (R = cfg.resize): RGB, aspect limited, shorter side R, the square box."""
    # on use only: loads torch
    from malm.training.data.dataset import load_image

    image = resize_shorter(limit_aspect(load_image(path, cfg)), cfg.resize, cfg.interpolation)
    square = image.crop(square_box(*image.size, cfg.resize, cfg.size))
    return np.asarray(square, dtype=np.uint8)


class SplitImages:
    """The cached photos of one split: `count(row)` and `pixels(row, k)` (a read-only memmap view)."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        try:
            self.pixels_all = np.load(root / "pixels.npy", mmap_mode="r")
            self.offsets = np.load(root / "offsets.npy")
        except (OSError, ValueError) as e:
            raise MalmError(f"{root}: damaged image cache ({e}); delete the folder to rebuild it") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "name": self.name}  # spawned workers re-open the memmap

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["name"])  # type: ignore[misc]

    def count(self, row: int) -> int:
        return int(self.offsets[row + 1] - self.offsets[row])

    def photo_row(self, row: int, k: int = 0) -> int:
        """The row of pixels.npy holding photo `k` of recipe row `row`."""
        if not 0 <= k < self.count(row):
            raise MalmError(f"image cache {self.root}: recipe row {row} has {self.count(row)} cached photos, not {k + 1}")
        return int(self.offsets[row]) + k

    def pixels(self, row: int, k: int = 0) -> np.ndarray:
        return self.pixels_all[self.photo_row(row, k)]


class ImageCache:
    def __init__(self, root: Path, manifest: dict[str, Any], built: bool) -> None:
        self.root, self.manifest, self.built = root, manifest, built
        self._splits: dict[str, SplitImages] = {}

    def split(self, name: str) -> SplitImages:
        if name not in self._splits:
            self._splits[name] = SplitImages(self.root / name, name)
        return self._splits[name]


def _wanted(prepared: PreparedData, cfg: PreprocessConfig) -> dict[str, Any]:
    m = prepared.manifest
    return {"format": IMAGE_CACHE_FORMAT, "side": cfg.resize, "size": cfg.size, "interpolation": cfg.interpolation,
            "max_pixels": cfg.max_pixels, "recipes": {k: m.get(k) for k in ("sources", "settings", "images_dir")}}


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def prepare_images(prepared: PreparedData, cfg: PreprocessConfig, workers: int | None = None,
                   log: Callable[[str], None] | None = None) -> ImageCache:
    """The image cache for `cfg`'s resize/size, built now if missing or made from other settings."""
    say = log or (lambda _m: None)
    root = prepared.cache_dir / f"images-{cfg.resize}-{cfg.interpolation}"
    wanted = _wanted(prepared, cfg)
    manifest = _read_manifest(root)
    if manifest is not None and {k: manifest.get(k) for k in wanted} == wanted:
        return ImageCache(root, manifest, built=False)
    with _lock(prepared.cache_dir.parent / f".{prepared.cache_dir.name.lstrip('.')}.images.lock"):
        manifest = _read_manifest(root)
        if manifest is not None and {k: manifest.get(k) for k in wanted} == wanted:
            return ImageCache(root, manifest, built=False)
        build = Path(tempfile.mkdtemp(prefix=".images-build-", dir=prepared.cache_dir))
        try:
            counts = {s: _build_split(prepared, s, cfg, build / s, workers or os.cpu_count() or 1, say) for s in SPLITS}
            manifest = {**wanted, "photos": counts}
            write_text_atomic(build / "manifest.json", json.dumps(manifest, indent=2) + "\n")
            give_default_mode(build)  # mkdtemp's 0700 would keep other users (a shared cache) out
            if root.exists():
                shutil.rmtree(root)
            os.rename(build, root)
            fsync_dir(prepared.cache_dir)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return ImageCache(root, manifest, built=True)


def _build_split(prepared: PreparedData, split: str, cfg: PreprocessConfig, out: Path, workers: int,
                 say: Callable[[str], None]) -> int:
    data = prepared.split(split)
    keep_all = split == "train"  # evaluation reads only a recipe's first photo
    paths: list[Path] = []
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    for i in range(len(data)):
        found = data.image_paths(i)
        paths += found if keep_all else found[:1]
        offsets[i + 1] = len(paths)
    out.mkdir(parents=True)
    side = cfg.resize
    pixels = np.lib.format.open_memmap(out / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
    say(f"image cache: decoding {len(paths)} {split} photos to {side}×{side} on {workers} threads")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), _BLOCK):
            block = paths[start : start + _BLOCK]
            for j, arr in enumerate(pool.map(lambda p: decode_square(p, cfg), block)):
                pixels[start + j] = arr
    pixels.flush()
    del pixels
    np.save(out / "offsets.npy", offsets)
    for name in ("pixels.npy", "offsets.npy"):
        with open(out / name, "rb") as f:
            os.fsync(f.fileno())
    return len(paths)
