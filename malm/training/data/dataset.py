"""Torch datasets over a prepared cache (`prepare.PreparedData`).

Randomness (which photo, crop position, flip) comes from torch's global RNG, which a DataLoader seeds
per worker from its generator: a seeded DataLoader gives the same batches every run.
An image that cannot be decoded raises `ImageError` naming the file (no silent skipping: a broken
file in the training set is something to fix, and skipping would change what an epoch is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from malm.errors import ImageError
from malm.preprocess import PreprocessConfig, normalize, preprocess, resize_shorter, to_rgb
from malm.training.data.prepare import PreparedData, SplitData


def load_image(path: Path, cfg: PreprocessConfig) -> Image.Image:
    """Decode an image file to RGB, refusing ones above `cfg.max_pixels` (decompression bombs)."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > cfg.max_pixels:
                raise ImageError(f"{path}: {im.width}x{im.height} image is above the {cfg.max_pixels}-pixel limit")
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
    left = int(torch.randint(0, w - cfg.size + 1, (1,)).item())
    top = int(torch.randint(0, h - cfg.size + 1, (1,)).item())
    image = image.crop((left, top, left + cfg.size, top + cfg.size))
    if torch.rand(1).item() < 0.5:
        image = ImageOps.mirror(image)
    return normalize(np.asarray(image, dtype=np.uint8), cfg)


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
    """

    def __init__(self, prepared: PreparedData, split: str | SplitData, preprocess: PreprocessConfig,
                 train: bool) -> None:
        self.data = _split(prepared, split)
        self.preprocess = preprocess
        self.train = train
        self.indices = self.data.paired_indices()  # row in the split of each item

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.indices[k])
        paths = self.data.image_paths(i)
        if self.train:
            path = paths[int(torch.randint(0, len(paths), (1,)).item())]
            pixels = train_transform(load_image(path, self.preprocess), self.preprocess)
        else:
            pixels = preprocess(load_image(paths[0], self.preprocess), self.preprocess)
        item = _text_item(self.data, i)
        item["image"] = torch.from_numpy(pixels)
        return item
