"""The one recipe record type: what the Recipe1M reader yields and what the index stores (light: stdlib only).

    RecipeRecord(id="000018c8a5", title="Tomato pasta", ingredients=("2 cups pasta",), instructions=("Boil.",))

The index reads id / title / ingredients / instructions / url / tags / names; the training reader also
fills `partition` and `image_paths`. `names` are clean ingredient names (Recipe1M's det_ingrs.json, which the
reader calls `det_ingredients`); without them the store detects names from the ingredient lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """One recipe record that cannot be indexed; `reason` is a short key used for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class RecipeRecord:
    id: str  # the corpus id (Recipe1M's hex id, or any unique string)
    title: str
    ingredients: tuple[str, ...]  # ingredient lines as written ("2 cups flour")
    instructions: tuple[str, ...]
    url: str = ""
    tags: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # clean ingredient names (e.g. Recipe1M det_ingrs); else detected
    partition: str = ""  # Recipe1M split (train | val | test); "" for records that come from elsewhere
    image_paths: tuple[Path, ...] = ()  # photos present on disk (the Recipe1M reader)

    def __post_init__(self) -> None:
        if not self.id:
            raise RecordError("missing_id", "recipe id is empty")

    @property
    def det_ingredients(self) -> tuple[str, ...]:
        """Recipe1M's name for `names`: the valid detected ingredients of det_ingrs.json."""
        return self.names

    def to_json(self) -> dict[str, Any]:
        """The index's JSON form (JSONL line / store row); partition and image paths are the reader's."""
        return {"id": self.id, "title": self.title, "ingredients": list(self.ingredients),
                "instructions": list(self.instructions), "url": self.url, "tags": list(self.tags),
                "ingredient_names": list(self.names)}
