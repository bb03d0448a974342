"""The one torch embedding path: training's validation, `malm eval --checkpoint`, export and index build.

    image_emb, recipe_emb, ids = embed_split("runs/ht-tiny", "data/bench", split="test")
    emb = embed_images(model.encode_image, images)          # numpy [N,3,H,W] -> numpy [N,D]
    emb = embed_recipes(model, items)                       # dicts with title/ingredients/instructions -> [N,D]
    encode = torch_recipe_encoder(Path("runs/ht"), "best")  # records -> embeddings, for edge_index.build_index

Every function runs under `torch.no_grad()` in fixed-size batches and returns float32; the model's own
`encode_*` already L2-normalizes, so rows are unit length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from malm.edge_index.builder import Encoded
from malm.errors import MalmError
from malm.text import encode_recipe
from malm.training.checkpoint import load_model
from malm.training.data import RecipeImageDataset, prepare
from malm.training.models.minilm import with_sentence_features

RECIPE_KEYS = ("title", "ingredients", "instructions")
T = TypeVar("T")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _tensor(value: Any) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    a = np.asarray(value)  # token ids (int32 from malm.text) become int64, what the embeddings take
    return torch.from_numpy(a.astype(np.int64) if a.dtype.kind in "iu" else a)


def stack_recipes(items: Iterable[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Recipe items (tensors or arrays per key) → one batch of tensors keyed title / ingredients / instructions."""
    rows = list(items)
    return {k: torch.stack([_tensor(r[k]) for r in rows]) for k in RECIPE_KEYS}


@torch.no_grad()
def embed_images(encode: Callable[[torch.Tensor], Any], images: np.ndarray, batch: int = 64) -> np.ndarray:
    """`encode` over numpy images in batches; an (embedding, tokens) output keeps the embedding."""
    outs = []
    for chunk in chunks(images, batch):
        out = encode(torch.from_numpy(np.ascontiguousarray(chunk)))
        outs.append((out[0] if isinstance(out, tuple) else out).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@torch.no_grad()
def embed_recipes(model: Any, items: Sequence[Mapping[str, Any]], batch: int = 128) -> torch.Tensor:
    """`model.encode_recipe` over recipe items (see `stack_recipes`), as one float32 tensor [N, D]."""
    outs = [model.encode_recipe(**stack_recipes(chunk)).float() for chunk in chunks(items, batch)]
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def embed_pairs(model: Any, dataset: Dataset, device: torch.device, batch_size: int = 64, amp: bool = False,
                num_workers: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_emb, recipe_emb, index) of every dataset item, L2-normalized float32, row i paired."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    imgs, recs, idx = [], [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                imgs.append(model.encode_image(batch["image"]).float().cpu())
                recs.append(model.encode_recipe(*(batch[k] for k in RECIPE_KEYS)).float().cpu())
            idx.append(batch["index"].cpu())
    model.train(was_training)
    return torch.cat(imgs).numpy(), torch.cat(recs).numpy(), torch.cat(idx).numpy()


def torch_recipe_encoder(run_dir: Path, tag: str = "best", tokens: bool = False) -> Callable[[Any], Any]:
    """`encode_fn` for `edge_index.build_index` over a run's trained torch recipe encoder: records → embeddings
    (and, with `tokens`, the per-recipe token features re-ranking stores)."""
    loaded = load_model(run_dir, tag=tag)
    limits = loaded.config.data.limits()
    model = loaded.model

    @torch.inference_mode()
    def encode(records: Any) -> Any:
        batch = stack_recipes(encode_recipe(r.title, r.ingredients, r.instructions, loaded.vocab, limits)
                              for r in records)
        if not tokens:
            return model.encode_recipe(**batch).float().numpy()
        feats = model.recipe_features(**batch)
        emb = torch.nn.functional.normalize(feats.embedding.float(), dim=-1).numpy()
        toks = [t[m].float().numpy() for t, m in zip(feats.tokens, feats.token_mask.bool(), strict=True)]
        return Encoded(emb, toks)

    return encode


def embed_split(run_dir: str | Path, data_dir: str | Path, split: str = "test", tag: str = "best",
                device: str = "cpu", batch_size: int = 64, cache_dir: str | Path | None = None,
                num_workers: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed a split of a Recipe1M-layout folder with a trained run (for `malm eval --checkpoint`).

    Images get the eval transform (`config.preprocess()`); recipes are encoded with the run's vocabulary.
    Rows are paired (image i shows recipe ids[i]); both arrays are float32 and L2-normalized.
    """
    loaded = load_model(run_dir, tag=tag, device=device)
    cfg = loaded.config
    prepared = prepare(data_dir, cache_dir=cache_dir, min_freq=cfg.data.min_freq, limits=cfg.data.limits())
    if prepared.vocab != loaded.vocab:
        raise MalmError(f"{data_dir}: its training split gives a different vocabulary than {run_dir}/vocab.json "
                        f"({len(prepared.vocab)} vs {len(loaded.vocab)} words); embed the data the run was trained on")
    dataset = RecipeImageDataset(prepared, split, cfg.preprocess(), train=False)
    if len(dataset) == 0:
        raise MalmError(f"{data_dir}: split {split!r} has no recipes with images")
    if cfg.model.recipe.sentence_features == "minilm":
        dataset = with_sentence_features(dataset, prepared, split)
    with torch.inference_mode(False):
        img, rec, index = embed_pairs(loaded.model, dataset, torch.device(device), batch_size=batch_size,
                                      amp=cfg.train.amp, num_workers=num_workers)
    ids = prepared.split(split).ids
    return img.astype(np.float32), rec.astype(np.float32), [ids[int(i)] for i in index]
