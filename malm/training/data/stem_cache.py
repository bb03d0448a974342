"""A frozen hybrid stem's feature maps, computed once per training photo instead of once per step.

A hybrid ViT with a frozen ImageNet stem (`malm.training.models.hybrid`) spends nearly all of a CPU training
step in the stem (measured at 96 px, batch 32, 1 thread: ~0.6 of ~0.7 s), although the stem never changes.
So, when `train.stem_cache` is on, every cached training photo (the uint8 `image_cache` square, side R)
goes through the stem once, as it is and mirrored, and a training item is a crop of that feature map:

    feats = prepare_stem_features(images.split("train"), stem, preprocess, cache_dir)
    feats.crop(row, k, top, left, flip)   -> float32 [C, g, g]   (g = size / stride: the patch grid)

The crop is the pixel crop moved onto the stride-16 grid (a random `size` window of the R square, at
offsets that are multiples of 16), so the augmentation keeps random crops and flips; the encoder's stem
passes such a map straight to its projection (`EffNetLite0Stem.forward`). Evaluation still encodes
images. The maps are float16 (a 7×7×80 map: 7.7 KiB per view).

Layout, beside the image cache (dropped and rebuilt with the prepared cache):

    <cache>/stem-<key>/manifest.json   what was computed from what (written last)
    <cache>/stem-<key>/features.npy    float16 [M, 2, C, h, w]: photo row of pixels.npy, (as is, mirrored)

`key` hashes the stem's weights and the image cache's settings, so another stem (stages, weights) or
another resize gets its own maps. Built in a temp folder and renamed into place under the cache's lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from malm._atomic import fsync_dir, give_default_mode, write_text_atomic
from malm.errors import MalmError
from malm.preprocess import PreprocessConfig
from malm.training.data.prepare import _lock

STEM_CACHE_FORMAT = 1
_BATCH = 64  # photos per stem pass while building


class StemFeatures:
    """The cached feature maps of one split's photos, read from a memmap (workers re-open it)."""

    def __init__(self, root: Path, stride: int) -> None:
        self.root, self.stride = root, stride
        try:
            self.features = np.load(root / "features.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise MalmError(f"{root}: damaged stem feature cache ({e}); delete the folder to rebuild it") from None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "stride": self.stride}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["stride"])  # type: ignore[misc]

    @property
    def map_side(self) -> int:
        return int(self.features.shape[-1])

    def crop(self, photo: int, top: int, left: int, grid: int, flip: bool) -> np.ndarray:
        """The `grid`×`grid` window at feature (top, left) of photo row `photo`, mirrored if `flip`.

        The mirrored view is the stem's map *of the mirrored photo*, whose column c is the photo's
        column (side - 1 - c): the same window of the mirrored photo starts at the mirrored column."""
        view = self.features[photo, int(flip)]
        if flip:
            left = view.shape[-1] - grid - left
        return np.asarray(view[:, top : top + grid, left : left + grid], dtype=np.float32)


def _stem_key(stem: torch.nn.Module, pixels_root: Path, side: int) -> str:
    h = hashlib.sha256()
    for name, t in sorted(stem.state_dict().items()):
        if name.startswith("proj."):  # the trained projection is applied after the cache
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({"format": STEM_CACHE_FORMAT, "pixels": str(pixels_root.resolve()), "side": side}).encode())
    return h.hexdigest()[:16]


def prepare_stem_features(split_images: Any, stem: torch.nn.Module, cfg: PreprocessConfig, cache_dir: Path,
                          log: Callable[[str], None] | None = None) -> StemFeatures:
    """The stem's maps of every photo of `split_images` (an `image_cache.SplitImages`), built if missing."""
    say = log or (lambda _m: None)
    stride = cfg.size // stem_grid(stem, cfg.size)
    pixels = split_images.pixels_all
    key = _stem_key(stem, Path(split_images.root), int(pixels.shape[1]))
    root = cache_dir / f"stem-{key}"
    if (root / "manifest.json").is_file():
        return StemFeatures(root, stride)
    with _lock(cache_dir.parent / f".{cache_dir.name.lstrip('.')}.stem.lock"):
        if (root / "manifest.json").is_file():
            return StemFeatures(root, stride)
        build = Path(tempfile.mkdtemp(prefix=".stem-build-", dir=cache_dir))
        try:
            _build(pixels, stem, cfg, build, say)
            write_text_atomic(build / "manifest.json", json.dumps(
                {"format": STEM_CACHE_FORMAT, "key": key, "photos": int(pixels.shape[0]),
                 "pixels": str(Path(split_images.root).resolve())}, indent=2) + "\n")
            give_default_mode(build)
            if root.exists():
                shutil.rmtree(root)
            os.rename(build, root)
            fsync_dir(cache_dir)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return StemFeatures(root, stride)


def stem_grid(stem: torch.nn.Module, size: int) -> int:
    """The patch grid side the stem gives a `size` image (its output's side)."""
    device = next(stem.parameters()).device
    with torch.no_grad():
        return int(stem.cnn(torch.zeros(1, 3, size, size, device=device)).shape[-1])  # type: ignore[operator]


@torch.no_grad()
def _build(pixels: np.ndarray, stem: torch.nn.Module, cfg: PreprocessConfig, out: Path,
           say: Callable[[str], None]) -> None:
    was_training = stem.training
    stem.eval()
    try:
        device = next(stem.parameters()).device  # a GPU run builds its maps on the GPU
        mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        n, side = int(pixels.shape[0]), int(pixels.shape[1])
        probe = stem.cnn(torch.zeros(1, 3, side, side, device=device))  # type: ignore[operator]
        features = np.lib.format.open_memmap(out / "features.npy", mode="w+", dtype=np.float16,
                                             shape=(n, 2, *probe.shape[1:]))
        say(f"stem features: {n} training photos through the frozen stem once ({side}×{side}, as is and mirrored)")
        for start in range(0, n, _BATCH):
            x = torch.from_numpy(np.array(pixels[start : start + _BATCH])).to(device)  # a writable copy
            x = x.permute(0, 3, 1, 2).float()
            x = (x / 255.0 - mean) / std
            for view, images in enumerate((x, x.flip(-1))):
                fmap = stem.cnn(images)  # type: ignore[operator]
                if not torch.isfinite(fmap).all():
                    raise MalmError("stem features: the stem gave non-finite values")
                features[start : start + len(x), view] = fmap.cpu().numpy().astype(np.float16)
        features.flush()
        del features
        with open(out / "features.npy", "rb") as f:
            os.fsync(f.fileno())
    finally:
        stem.train(was_training)
