"""The procedural food benchmark: recipes and their photos, written in exactly the Recipe1M layout.

    from malm.training.synth import generate
    stats = generate("data/synth", recipes=10_000, seed=0, image_size=128, workers=2)

numpy + Pillow only (no torch). The same seed gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SYNTH_VERSION", "RecipeSpec", "SynthStats", "generate", "generate_recipes", "image_relpath"]

_WHERE = {"RecipeSpec": "recipes", "generate_recipes": "recipes", "SYNTH_VERSION": "writer",
          "SynthStats": "writer", "generate": "writer", "image_relpath": "writer"}


def __getattr__(name: str) -> Any:
    # Lazy: `malm --help` imports the CLI module of this package and must not pay for the catalogue.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"malm.training.synth.{_WHERE[name]}"), name)
    raise AttributeError(name)
