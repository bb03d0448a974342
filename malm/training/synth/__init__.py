"""The procedural food benchmark: recipes and their photos, written in exactly the Recipe1M layout.

    from malm.training.synth import generate
    stats = generate("data/synth", recipes=10_000, seed=0, image_size=128, workers=2)

numpy + Pillow only (no torch). The same seed gives byte-identical files whatever the worker count.
"""

from malm.training.synth.recipes import RecipeSpec, generate_recipes
from malm.training.synth.writer import SYNTH_VERSION, SynthStats, generate, image_relpath

__all__ = ["SYNTH_VERSION", "RecipeSpec", "SynthStats", "generate", "generate_recipes", "image_relpath"]
