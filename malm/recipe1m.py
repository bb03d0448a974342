"""Reader of the Recipe1M files as they are distributed (and as `malm data synth` writes them).

    layer1.json     [{id, title, ingredients: [{text}], instructions: [{text}], partition, url}, …]
    layer2.json     [{id, images: [{id, url}]}, …]                      (recipes with photos)
    det_ingrs.json  [{id, ingredients: [{text}], valid: [bool]}, …]       (optional: detected ingredient names)
    images          <images>/<partition>/<c0>/<c1>/<c2>/<c3>/<image_id>

`<images>` is `DATA_DIR/images` when that folder exists, else `DATA_DIR`, or what the caller names.
layer1.json is ~381 MB in the real set, so it is streamed record by record (`iter_json_array`) rather than
`json.load`-ed: the Python object tree of the whole file would take several GB.

Malformed records are skipped and counted per reason (never a crash, unless `strict=True`); images that
layer2 lists but that are not on disk are counted as missing. A recipe is *paired* when at least one of its
images is present.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malm.errors import MalmError
from malm.recipe_record import RecipeRecord

SPLITS = ("train", "val", "test")
# How retrieval is scored on a split (malm.evaluation): H-T's 10 random subsets, or T-Food's disjoint bags.
PROTOCOLS = ("ht", "tfood")
LAYER1, LAYER2, DET_INGRS = "layer1.json", "layer2.json", "det_ingrs.json"

_CHUNK = 1 << 20
_MAX_ITEM = 64 << 20  # no Recipe1M record comes near this


# The reader yields the shared record type (id, title, ingredients, instructions, url, names, partition,
# image_paths); `Recipe` is its name here.
Recipe = RecipeRecord


@dataclass
class ReadStats:
    """What the reader saw: per-split counts, skipped records per reason, missing images."""

    recipes: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    paired: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    images_present: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    images_missing: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: Counter[str] = field(default_factory=Counter)  # layer1 records left out, by reason
    layer2_skipped: Counter[str] = field(default_factory=Counter)
    det_ingrs_skipped: Counter[str] = field(default_factory=Counter)
    has_det_ingrs: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipes": dict(self.recipes),
            "paired": dict(self.paired),
            "images_present": dict(self.images_present),
            "images_missing": dict(self.images_missing),
            "skipped": dict(sorted(self.skipped.items())),
            "layer2_skipped": dict(sorted(self.layer2_skipped.items())),
            "det_ingrs_skipped": dict(sorted(self.det_ingrs_skipped.items())),
            "has_det_ingrs": self.has_det_ingrs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadStats:
        s = cls()
        for k in ("recipes", "paired", "images_present", "images_missing"):
            getattr(s, k).update(d.get(k, {}))
        for k in ("skipped", "layer2_skipped", "det_ingrs_skipped"):
            getattr(s, k).update(d.get(k, {}))
        s.has_det_ingrs = bool(d.get("has_det_ingrs", False))
        return s

    def summary(self) -> str:
        """A few human lines: counts per split, missing images, skipped records."""
        lines = [
            f"{sp}: {self.recipes[sp]} recipes, {self.paired[sp]} paired, {self.images_present[sp]} images"
            + (f" ({self.images_missing[sp]} listed but missing)" if self.images_missing[sp] else "")
            for sp in SPLITS
        ]
        if self.skipped:
            lines.append("skipped layer1 records: " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())))
        if self.layer2_skipped:
            lines.append("skipped layer2 entries: " + ", ".join(f"{k}={v}" for k, v in sorted(self.layer2_skipped.items())))
        if self.det_ingrs_skipped:
            lines.append("skipped det_ingrs entries: "
                         + ", ".join(f"{k}={v}" for k, v in sorted(self.det_ingrs_skipped.items())))
        return "\n".join(lines)


@dataclass
class Recipe1M:
    """All recipes in memory (fine for the benchmark and tests; `prepare` streams instead)."""

    data_dir: Path
    images_dir: Path
    recipes: list[Recipe]
    stats: ReadStats


def iter_json_array(path: Path) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one at a time, holding only a small window of text."""
    decoder = json.JSONDecoder()
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise MalmError(f"{path}: file not found") from None
    except OSError as e:
        raise MalmError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        buf, pos, eof = "", 0, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            try:
                chunk = f.read(_CHUNK)
            except UnicodeDecodeError as e:
                raise MalmError(f"{path}: not UTF-8 text ({e.reason})") from None
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0
            return bool(chunk)

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return pos < len(buf)

        if not skip_ws() or buf[pos] != "[":
            raise MalmError(f"{path}: not a JSON array (Recipe1M files are one top-level list)")
        pos += 1
        first = True
        while True:
            if not skip_ws():
                raise MalmError(f"{path}: invalid JSON (file ends inside the top-level list; truncated?)")
            if buf[pos] == "]":
                pos += 1
                if skip_ws():
                    raise MalmError(f"{path}: invalid JSON (extra data after the top-level list)")
                return
            if not first:
                if buf[pos] != ",":
                    raise MalmError(f"{path}: invalid JSON (expected ',' between list items)")
                pos += 1
                if not skip_ws():
                    raise MalmError(f"{path}: invalid JSON (file ends inside the top-level list; truncated?)")
            first = False
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                    # A number cut at the window's end decodes short ("-1.5e3" as -1.5): widen and retry.
                    # Objects, lists, strings and literals end with their own delimiter, so they are whole.
                    number = isinstance(item, (int, float)) and not isinstance(item, bool)
                    if number and len(buf) - end < 64 and fill():
                        continue
                    break
                except json.JSONDecodeError as e:
                    # Usually the item continues past the window: widen it. At EOF it is real damage;
                    # so is an "item" of many MB (a broken quote swallowing the file).
                    if len(buf) - pos > _MAX_ITEM or not fill():
                        if e.pos >= len(buf):
                            raise MalmError(f"{path}: invalid JSON (file ends inside a list item; truncated?)") from None
                        raise MalmError(f"{path}: invalid JSON ({e.msg} near character {e.pos - pos} of an item)") from None
            pos = end
            yield item


def resolve_images_dir(data_dir: Path, images_dir: str | os.PathLike[str] | None) -> Path:
    if images_dir is not None:
        p = Path(images_dir)
        if not p.is_dir():
            raise MalmError(f"{p}: images folder not found")
        return p
    return data_dir / "images" if (data_dir / "images").is_dir() else data_dir


def image_relpath(partition: str, image_id: str) -> str:
    """`<partition>/<c0>/<c1>/<c2>/<c3>/<image_id>`, relative to the images root."""
    return "/".join((partition, *image_id[:4], image_id))


def _check_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise MalmError(f"{data_dir}: data folder not found")
    if not (data_dir / LAYER1).is_file():
        raise MalmError(f"{data_dir / LAYER1}: file not found (a Recipe1M folder holds layer1.json, layer2.json, images/)")


def _texts(value: Any) -> tuple[str, ...] | str:
    """The `text` of each `{text: …}` item, blanks dropped; or the reason the list is malformed."""
    if not isinstance(value, list):
        return "missing" if value is None else "not_list"
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            return "bad_item"
        text = item["text"].strip()
        if text:
            out.append(text)
    return tuple(out) if out else "empty"


def read_layer2(path: Path, stats: ReadStats, strict: bool = False) -> dict[str, list[str]]:
    """recipe id → image ids, in file order, duplicates dropped."""
    images: dict[str, list[str]] = {}
    for entry in iter_json_array(path):
        reason = None
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            reason = "bad_id"
        elif not isinstance(entry.get("images"), list):
            reason = "bad_images"
        if reason is None:
            ids = [im.get("id") for im in entry["images"] if isinstance(im, dict)]
            good = [i for i in ids if isinstance(i, str) and len(i) >= 4 and "/" not in i and "\\" not in i]
            if len(good) != len(entry["images"]):
                stats.layer2_skipped["bad_image_id"] += len(entry["images"]) - len(good)
            lst = images.setdefault(entry["id"], [])
            lst.extend(i for i in good if i not in lst)
            continue
        if strict:
            raise MalmError(f"{path}: malformed entry ({reason}): {str(entry)[:200]}")
        stats.layer2_skipped[reason] += 1
    return images


def read_det_ingrs(path: Path, stats: ReadStats, strict: bool = False) -> dict[str, tuple[str, ...]]:
    """recipe id → the detected ingredient names marked valid."""
    out: dict[str, tuple[str, ...]] = {}
    for entry in iter_json_array(path):
        ok = (isinstance(entry, dict) and isinstance(entry.get("id"), str)
              and isinstance(entry.get("ingredients"), list) and isinstance(entry.get("valid"), list)
              and len(entry["ingredients"]) == len(entry["valid"]))
        if ok:
            names = []
            for item, valid in zip(entry["ingredients"], entry["valid"], strict=True):
                if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                    ok = False
                    break
                if valid is True and item["text"].strip():
                    # Interned: a few thousand names repeat over a million recipes.
                    names.append(sys.intern(item["text"].strip()))
        if not ok:
            if strict:
                raise MalmError(f"{path}: malformed entry: {str(entry)[:200]}")
            stats.det_ingrs_skipped["malformed"] += 1
            continue
        out[entry["id"]] = tuple(names)
    return out


def _validate(entry: Any) -> Recipe | str:
    """A Recipe (without images) or the reason the layer1 record is malformed."""
    if not isinstance(entry, dict):
        return "not_object"
    rid = entry.get("id")
    if not isinstance(rid, str) or not rid.strip():
        return "bad_id"
    title = entry.get("title")
    if not isinstance(title, str) or not title.strip():
        return "bad_title"
    partition = entry.get("partition")
    if partition not in SPLITS:
        return "bad_partition"
    ingredients = _texts(entry.get("ingredients"))
    if isinstance(ingredients, str):
        return f"ingredients_{ingredients}"
    instructions = _texts(entry.get("instructions"))
    if isinstance(instructions, str):
        return f"instructions_{instructions}"
    url = entry.get("url")
    try:
        # A lone surrogate (JSON "\ud800") decodes fine but breaks every UTF-8 writer downstream (SQLite, JSON).
        for text in (rid, title, *ingredients, *instructions, url if isinstance(url, str) else ""):
            text.encode("utf-8")
    except UnicodeEncodeError:
        return "bad_unicode"
    # The url is only shown to users, so a record without one is still usable.
    return Recipe(id=rid, title=title.strip(), ingredients=ingredients, instructions=instructions,
                  partition=partition, url=url if isinstance(url, str) else "", image_paths=())


def iter_recipe1m(
    data_dir: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    stats: ReadStats | None = None,
    strict: bool = False,
    exists: Callable[[str], bool] = os.path.isfile,
) -> Iterator[Recipe]:
    """Stream the valid recipes of a Recipe1M folder in layer1 order, filling `stats` as it goes.

    layer2.json and det_ingrs.json are read whole first (they are small next to layer1).
    layer2.json is required (`[]` for text-only data); det_ingrs.json is optional.
    """
    data_dir = Path(data_dir)
    _check_data_dir(data_dir)
    images_root = resolve_images_dir(data_dir, images_dir)
    stats = stats if stats is not None else ReadStats()
    if not (data_dir / LAYER2).is_file():
        # Silently reading "no photos" would turn a missing file into an empty training set.
        raise MalmError(f"{data_dir / LAYER2}: file not found (it lists each recipe's photos; "
                        "for text-only data write an empty list: [])")
    layer2 = read_layer2(data_dir / LAYER2, stats, strict)
    det: dict[str, tuple[str, ...]] = {}
    if (data_dir / DET_INGRS).is_file():
        det = read_det_ingrs(data_dir / DET_INGRS, stats, strict)
        stats.has_det_ingrs = True
    seen: set[str] = set()
    root = str(images_root)
    for entry in iter_json_array(data_dir / LAYER1):
        recipe = _validate(entry)
        if isinstance(recipe, Recipe) and recipe.id in seen:
            recipe = "duplicate_id"
        if isinstance(recipe, str):
            if strict:
                raise MalmError(f"{data_dir / LAYER1}: malformed record ({recipe}): {str(entry)[:200]}")
            stats.skipped[recipe] += 1
            continue
        seen.add(recipe.id)
        split = recipe.partition
        present = []
        for image_id in layer2.get(recipe.id, ()):
            full = os.path.join(root, image_relpath(split, image_id))
            if exists(full):
                present.append(Path(full))
            else:
                stats.images_missing[split] += 1
        stats.recipes[split] += 1
        stats.images_present[split] += len(present)
        stats.paired[split] += bool(present)
        yield Recipe(id=recipe.id, title=recipe.title, ingredients=recipe.ingredients,
                     instructions=recipe.instructions, partition=split, url=recipe.url,
                     image_paths=tuple(present), names=det.get(recipe.id, ()))
    unknown = len(layer2.keys() - seen)
    if unknown:
        stats.layer2_skipped["unknown_recipe_id"] += unknown


def load_recipe1m(
    data_dir: str | os.PathLike[str], images_dir: str | os.PathLike[str] | None = None, strict: bool = False
) -> Recipe1M:
    """Every valid recipe of a Recipe1M folder in memory, with `image_paths` of present images only."""
    data_dir = Path(data_dir)
    stats = ReadStats()
    recipes = list(iter_recipe1m(data_dir, images_dir, stats, strict))
    return Recipe1M(data_dir=data_dir, images_dir=resolve_images_dir(data_dir, images_dir), recipes=recipes, stats=stats)
