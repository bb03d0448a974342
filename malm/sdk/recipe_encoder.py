"""Encode recipes on the device with the bundle's ONNX recipe encoder (no torch), for `add_recipes`.

Export writes `encoders/recipe_fp32.onnx` (`title` [N,T], `ingredients` [N,Ni,L], `instructions` [N,Ns,L]
int64 → `embedding` [N,D]; optionally `tokens` [N,S,Dt] + `token_mask` [N,S]) and `vocab.json`. The text
limits are read off the model's input shapes, so tokenization matches what the model was exported with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from malm.edge_index.builder import Encoded
from malm.edge_index.records import RecipeRecord
from malm.errors import BundleError
from malm.sdk.backends.ort import OrtSession
from malm.sdk.bundle_loader import Bundle
from malm.text import TextLimits, Vocabulary, encode_recipe

INPUTS = ("title", "ingredients", "instructions")


class OnnxRecipeEncoder:
    """`encode_fn` for `malm.edge_index.add_recipes`, backed by ONNX Runtime."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        entry = bundle.encoder("recipe_fp32")
        if not entry or not bundle.listed("vocab.json"):
            raise BundleError(f"bundle {bundle.root}: has no ONNX recipe encoder + vocab.json to encode recipes "
                              "on the device; pass --checkpoint to encode with the trained model")
        self.session = OrtSession(bundle.path(entry.file), threads=threads, model_bytes=bundle.read_bytes(entry.file))
        if set(INPUTS) - set(self.session.input_names) or "embedding" not in self.session.output_names:
            raise BundleError(f"bundle {bundle.root}: recipe encoder has inputs {self.session.input_names}, "
                              f"outputs {self.session.output_names}; expected {INPUTS} -> embedding")
        self.vocab = Vocabulary.load(bundle.path("vocab.json"))
        t, i, s = (self.session.input_shape(n) for n in INPUTS)
        try:
            self.limits = TextLimits(max_title_tokens=int(t[1]), max_ingredients=int(i[1]),  # type: ignore[arg-type]
                                     max_instructions=int(s[1]), max_tokens=int(i[2]))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BundleError(f"bundle {bundle.root}: recipe encoder inputs need static text dims, got {t} {i} {s}") \
                from None
        self.with_tokens = {"tokens", "token_mask"} <= set(self.session.output_names)

    def __call__(self, records: Sequence[RecipeRecord]) -> Encoded:
        arrays = [encode_recipe(r.title, r.ingredients, r.instructions, self.vocab, self.limits) for r in records]
        feeds = {k: np.stack([a[k] for a in arrays]).astype(np.int64) for k in INPUTS}
        names = ["embedding", "tokens", "token_mask"] if self.with_tokens else ["embedding"]
        out = self.session.run(feeds, names)
        if not self.with_tokens:
            return Encoded(out["embedding"])
        mask = out["token_mask"].astype(bool)
        return Encoded(out["embedding"], [tok[m] for tok, m in zip(out["tokens"], mask, strict=True)])
