"""Compatibility shim: the hand-made Recipe1M folder lives in tests/conftest.py (fixture `recipe1m`, function
`make_recipe1m`). Kept so tests written against the old module still run; new tests use the fixture."""

from conftest import BAD, DET, GOOD, LAYER2, PRESENT, image_path, make_recipe1m, recipe, write_image

__all__ = ["BAD", "DET", "GOOD", "LAYER2", "PRESENT", "image_path", "make_recipe1m", "recipe", "write_image"]
