"""Recipe records as the index sees them, read from JSONL and validated one by one.

A JSONL file has one recipe per line: {"id", "title", "ingredients": [str], "instructions": [str],
"url"?, "tags"?}. A bad line is skipped with a reason (counted per reason) unless strict.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malm.errors import MalmError
from malm.recipe_record import RecipeRecord, RecordError

__all__ = ["ReadReport", "RecipeRecord", "RecordError", "dedupe", "iter_jsonl", "parse_record"]


# Limits far above any real recipe (Recipe1M's longest instruction is a few thousand characters): a
# record beyond them is a broken export, and storing it would bloat the bundle every device downloads.
MAX_TEXT_CHARS = 100_000
MAX_LIST_ITEMS = 10_000


def _text(value: str, key: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise RecordError("too_long", f"'{key}' has {len(value)} characters (limit {MAX_TEXT_CHARS})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # e.g. a lone surrogate from a JSON "\ud800" escape: SQLite and every app downstream would choke on it.
        raise RecordError("bad_unicode", f"'{key}' is not valid Unicode (lone surrogate)") from None
    return value


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecordError(f"bad_{key}", f"'{key}' must be a list of strings")
    if len(value) > MAX_LIST_ITEMS:
        raise RecordError("too_long", f"'{key}' has {len(value)} items (limit {MAX_LIST_ITEMS})")
    out: list[str] = []
    for item in value:
        # Recipe1M stores ingredient/instruction lines as {"text": ...}; accept both shapes.
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise RecordError(f"bad_{key}", f"'{key}' must be a list of strings")
        item = _text(item, key).strip()
        if item:
            out.append(item)
    return tuple(out)


def parse_record(obj: Any) -> RecipeRecord:
    """Validate one decoded JSON object into a `RecipeRecord` (raises `RecordError`)."""
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", "line is not a JSON object")
    rid = obj.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid.strip():
        raise RecordError("missing_id", "no 'id'")
    _text(rid, "id")
    title = obj.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise RecordError("bad_title", "'title' must be a string")
    _text(title, "title")
    ingredients = _str_list(obj.get("ingredients"), "ingredients")
    instructions = _str_list(obj.get("instructions"), "instructions")
    if not title.strip() and not ingredients and not instructions:
        raise RecordError("empty", "no title, ingredients or instructions")
    url = obj.get("url") or ""
    if not isinstance(url, str):
        raise RecordError("bad_url", "'url' must be a string")
    _text(url, "url")
    return RecipeRecord(id=rid.strip(), title=title.strip(), ingredients=ingredients, instructions=instructions,
                        url=url, tags=_str_list(obj.get("tags"), "tags"),
                        names=_str_list(obj.get("ingredient_names"), "ingredient_names"))


@dataclass
class ReadReport:
    """How many records were read and why the others were skipped."""

    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "skipped": dict(self.skipped)}


def iter_jsonl(path: str | os.PathLike[str], report: ReadReport, strict: bool = False,
               split: str = "all") -> Iterator[RecipeRecord]:
    """Records of a JSONL file; bad lines are counted in `report` (or raise `MalmError` when strict).

    With `split` other than "all", records whose optional "partition" field names another split are left out.
    """
    path = Path(path)
    if path.is_dir():
        raise MalmError(f"recipes {path}: is a directory, not a JSONL file")
    try:
        f = open(path, "rb")  # bytes: one line that is not UTF-8 is that record's error, not the file's
    except OSError as e:
        raise MalmError(f"recipes {path}: cannot be read ({e.strerror or e})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            obj: Any = None
            try:
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise RecordError("not_utf8", f"byte {e.start} is not UTF-8") from None
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError("invalid_json", str(e)) from None
                except RecursionError:
                    raise RecordError("invalid_json", "nested too deeply") from None
                rec = parse_record(obj)
            except RecordError as e:
                if strict:
                    raise MalmError(f"recipes {path}:{lineno}: {e}") from None
                report.skip(e.reason)
                continue
            if split != "all" and isinstance(obj, dict) and obj.get("partition") not in (None, split):
                continue
            report.read += 1
            yield rec


def dedupe(records: Iterable[RecipeRecord], report: ReadReport, strict: bool = False,
           seen: set[str] | None = None) -> Iterator[RecipeRecord]:
    """Drop records whose id was already seen (in this input or in `seen`, e.g. the existing store)."""
    seen = set() if seen is None else seen
    for rec in records:
        if rec.id in seen:
            if strict:
                raise MalmError(f"recipes: duplicate recipe id {rec.id!r}")
            report.skip("duplicate_id")
            report.read -= 1
            continue
        seen.add(rec.id)
        yield rec


# Ingredient names ---------------------------------------------------------------------------------
# Good enough to answer "exclude recipes with peanuts": strip quantities, units and preparation words
# from an ingredient line, singularize, and keep the words that are left.
_UNITS = {
    "c", "cup", "cups", "tbsp", "tbs", "tbl", "tablespoon", "tablespoons", "tsp", "teaspoon", "teaspoons",
    "g", "gram", "grams", "kg", "kilogram", "kilograms", "mg", "ml", "l", "liter", "liters", "litre", "litres",
    "oz", "ounce", "ounces", "lb", "lbs", "pound", "pounds", "pinch", "dash", "can", "cans", "package",
    "packages", "pkg", "jar", "jars", "bottle", "stick", "sticks", "slice", "slices", "clove", "cloves",
    "bunch", "handful", "piece", "pieces", "quart", "quarts", "qt", "pint", "pints", "pt", "gallon", "envelope",
    "container", "box", "bag", "sprig", "sprigs", "head", "heads", "fl", "inch", "inches", "cm", "large",
    "medium", "small", "whole", "fresh", "freshly", "chopped", "minced", "diced", "sliced", "ground", "of",
    "to", "taste", "and", "or", "a", "an", "the", "about", "finely", "roughly", "thinly", "optional",
    "peeled", "cut", "into", "for", "divided", "softened", "melted", "room", "temperature", "cubed", "grated",
    "shredded", "crushed", "packed", "firmly", "lightly", "beaten", "plus", "more", "extra", "each", "x",
}
_WORD = re.compile(r"[a-zà-ÿ]+(?:['-][a-zà-ÿ]+)*")


def singular(word: str) -> str:
    """Crude English singular, applied the same way to stored names and queries (so they match)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("oes", "ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def name_words(text: str) -> list[str]:
    return [singular(w) for w in _WORD.findall(text.lower())]


def ingredient_name(line: str) -> str:
    """'2 cups chopped fresh tomatoes, peeled (optional)' -> 'tomato'."""
    text = re.sub(r"\([^)]*\)", " ", line.lower()).split(",")[0]
    words = [w for w in _WORD.findall(text) if w not in _UNITS]
    return " ".join(singular(w) for w in words)


def ingredient_names(lines: Iterable[str], given: Iterable[str] = ()) -> list[str]:
    """Normalized names: from `given` clean names when there are any, else detected from the lines."""
    given = list(given)
    names: list[str] = []
    for line in given or lines:
        name = " ".join(name_words(line)) if given else ingredient_name(line)
        if name and name not in names:
            names.append(name)
    return names
