"""Torch datasets over a prepared cache (`prepare.PreparedData`).

Randomness (which photo, crop position, flip) comes from torch's global RNG, which a DataLoader seeds
per worker from its generator: a seeded DataLoader gives the same batches every run.
An image that cannot be decoded raises `ImageError` naming the file (no silent skipping: a broken
file in the training set is something to fix, and skipping would change what an epoch is).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from malm.errors import ImageError, MalmError
from malm.preprocess import PreprocessConfig, draft_jpeg, normalize, preprocess, resize_shorter, to_rgb
from malm.training.data.prepare import PreparedData, SplitData


def load_image(path: Path, cfg: PreprocessConfig) -> Image.Image:
    """Decode an image file to RGB, refusing ones above `cfg.max_pixels` (decompression bombs).

    JPEGs are decoded in draft mode exactly as the SDK does (`malm.sdk.image_io.load_image` with
    `min_side=cfg.resize`), so the evaluation measures the pixels that ship.
    """
    try:
        with Image.open(path) as im:
            if im.width * im.height > cfg.max_pixels:
                raise ImageError(f"{path}: {im.width}x{im.height} image is above the {cfg.max_pixels}-pixel limit")
            draft_jpeg(im, cfg.resize)
            im.load()
            return to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found (it was there when the data was prepared; "
                         "rerun `malm data prepare --force`)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None


def train_transform(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Resize the shorter side to `cfg.resize`, random `cfg.size` crop, random horizontal flip, normalize."""
    image = resize_shorter(image, cfg.resize, cfg.interpolation)
    w, h = image.size
    top, left = crop_offsets(h, w, cfg.size)
    image = image.crop((left, top, left + cfg.size, top + cfg.size))
    if torch.rand(1).item() < 0.5:
        image = ImageOps.mirror(image)
    return normalize(np.asarray(image, dtype=np.uint8), cfg)


def crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Random (top, left) of a size×size crop, from torch's global RNG (seeded per item by the trainer)."""
    left = int(torch.randint(0, width - size + 1, (1,)).item())
    top = int(torch.randint(0, height - size + 1, (1,)).item())
    return top, left


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would be a blocking host->GPU copy every step.
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return m, torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)


def device_transform(batch: dict[str, Any], cfg: PreprocessConfig) -> dict[str, Any]:
    """A cached-pixel batch on its device -> the model's input: uint8 [B, S, S, 3] + `flip` [B] become
    normalized float32 [B, 3, S, S], flipped where asked. Tensor ops on the whole batch (GPU or CPU), no sync;
    the same arithmetic as `malm.preprocess.normalize`. Batches without `flip` pass through unchanged."""
    if "flip" not in batch:
        return batch
    x = batch["image"].permute(0, 3, 1, 2).float() / 255.0
    x = torch.where(batch["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    mean, std = _mean_std(cfg.mean, cfg.std, x.device)
    out = {k: v for k, v in batch.items() if k != "flip"}
    out["image"] = ((x - mean) / std).contiguous()
    return out


def center_crop(square: np.ndarray, size: int) -> np.ndarray:
    top, left = (square.shape[0] - size) // 2, (square.shape[1] - size) // 2
    return np.asarray(square[top : top + size, left : left + size])


def _split(prepared: PreparedData, split: str | SplitData) -> SplitData:
    return split if isinstance(split, SplitData) else prepared.split(split)


def _text_item(data: SplitData, i: int) -> dict[str, torch.Tensor]:
    return {
        "title": torch.from_numpy(np.array(data.title[i], dtype=np.int64)),
        "ingredients": torch.from_numpy(np.array(data.ingredients[i], dtype=np.int64)),
        "instructions": torch.from_numpy(np.array(data.instructions[i], dtype=np.int64)),
        "index": torch.tensor(i, dtype=torch.int64),
    }


class RecipeTextDataset(torch.utils.data.Dataset):
    """Every recipe of a split (with or without photos): token arrays + `index` (row in the split)."""

    def __init__(self, prepared: PreparedData, split: str | SplitData) -> None:
        self.data = _split(prepared, split)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _text_item(self.data, int(i))


class RecipeImageDataset(torch.utils.data.Dataset):
    """Paired recipes of a split: an image plus token arrays; `index` is the recipe's row in the split.

    Train: a random photo of the recipe, random crop + flip. Eval: the first photo, `malm.preprocess.preprocess`.
    With `images` (an `image_cache.SplitImages` of this split) photos come from the uint8 cache: eval items
    are normalized as before (same pixels); train items are the uint8 crop [S, S, 3] plus a `flip` flag,
    and `device_transform` finishes them on the batch's device. With `stem` as well (a frozen hybrid stem's
    `stem_cache.StemFeatures` of this split's cached photos), a train item's "image" is the feature map of
    the crop instead: float32 [C, g, g], the same draws (photo, crop, flip) on the stem's stride grid.
    """

    def __init__(self, prepared: PreparedData, split: str | SplitData, preprocess: PreprocessConfig,
                 train: bool, images: Any = None, families: np.ndarray | None = None) -> None:
        self.data = _split(prepared, split)
        self.preprocess = preprocess
        self.train = train
        self.images = images
        self.stem: Any = None  # set by `use_stem_features`
        self.indices = self.data.paired_indices()  # row in the split of each item
        # Each recipe row's near-duplicate family (data/families.py), added to items as `family` when known.
        self.families = families

    def use_stem_features(self, stem: Any) -> None:
        if self.images is None or not self.train:
            raise MalmError("stem features need the training split's image cache (train.image_cache)")
        self.stem = stem

    def __len__(self) -> int:
        return len(self.indices)

    def _cached(self, i: int) -> dict[str, Any]:
        cfg, n = self.preprocess, self.images.count(i)
        if not self.train:
            return {"image": torch.from_numpy(normalize(center_crop(self.images.pixels(i), cfg.size), cfg))}
        # The same RNG draws, in the same order, as the decoding path: photo, crop position, flip.
        k = int(torch.randint(0, n, (1,)).item())
        if self.stem is not None:
            grid, side = cfg.size // self.stem.stride, self.stem.map_side
            top, left = crop_offsets(side, side, grid)
            flip = bool(torch.rand(1).item() < 0.5)
            return {"image": torch.from_numpy(self.stem.crop(self.images.photo_row(i, k), top, left, grid, flip))}
        square = self.images.pixels(i, k)
        top, left = crop_offsets(square.shape[0], square.shape[1], cfg.size)
        crop = np.ascontiguousarray(square[top : top + cfg.size, left : left + cfg.size])
        return {"image": torch.from_numpy(crop), "flip": torch.tensor(bool(torch.rand(1).item() < 0.5))}

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        item = self._item(i)
        if self.families is not None:
            item["family"] = torch.tensor(int(self.families[i]), dtype=torch.int64)
        return item

    def _item(self, i: int) -> dict[str, Any]:
        if self.images is not None:
            return _text_item(self.data, i) | self._cached(i)
        paths = self.data.image_paths(i)
        if self.train:
            path = paths[int(torch.randint(0, len(paths), (1,)).item())]
            pixels = train_transform(load_image(path, self.preprocess), self.preprocess)
        else:
            pixels = preprocess(load_image(paths[0], self.preprocess), self.preprocess)
        item = _text_item(self.data, i)
        item["image"] = torch.from_numpy(pixels)
        return item


class RecipeOnlyBatches:
    """Batches of a split's recipes *without* photos, for the recipe self-supervision (`train.recipe_only_batch`).

    `batch(n, generator)` draws n of them (with replacement, from the given generator: the train loop seeds it
    per rank and step, so a resumed run draws the same) as `ro_title`, `ro_ingredients`, `ro_instructions`.
    """

    def __init__(self, prepared: PreparedData, split: str | SplitData) -> None:
        self.data = _split(prepared, split)
        self.rows = np.flatnonzero(np.asarray(self.data.num_images) == 0)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not len(self.rows):
            return {}
        picks = torch.randint(0, len(self.rows), (n,), generator=generator).tolist()
        items = [_text_item(self.data, int(self.rows[k])) for k in picks]
        return {f"ro_{key}": torch.stack([it[key] for it in items]) for key in ("title", "ingredients", "instructions")}
