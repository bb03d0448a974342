"""Recipe generation: families of near-duplicate recipes, with titles, ingredient lines and instructions.

A family is one dish with one core set of ingredients; its members differ from the first by one or two
ingredients (a swap, an addition, a removal, another sauce), keep similar titles, and share a partition, so the
test split holds hard negatives that only fine-grained matching tells apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from malm.training.synth.dishes import DISH_WEIGHTS, DISHES, GARNISH_CATEGORIES, Dish
from malm.training.synth.ingredients import INGREDIENTS

PARTITIONS = ("train", "val", "test")
PARTITION_PROBS = (0.70, 0.15, 0.15)
PHOTO_COUNTS = (0, 1, 2, 3)
PHOTO_PROBS = (0.12, 0.45, 0.30, 0.13)
FAMILY_SIZES = (1, 2, 3, 4, 5)
FAMILY_PROBS = (0.35, 0.25, 0.20, 0.12, 0.08)
AMOUNTS = (0.5, 0.75, 1.0, 1.5, 2.0)
AMOUNT_PROBS = (0.15, 0.2, 0.35, 0.2, 0.1)

STYLES = ("Rustic", "Easy", "Classic", "Quick", "Healthy", "Homemade", "Simple", "Weeknight", "Summer",
          "Winter", "Garden", "Loaded", "Fresh", "Hearty", "Spicy", "Creamy", "Mediterranean", "Grandma's",
          "Best", "Ultimate", "Skinny", "One-Pot", "20-Minute", "Farmhouse", "Zesty", "Sunday", "Family",
          "Perfect", "Light", "Golden")

# Which toppings a title names first: what a cook would put in the name.
_SALIENCE = {"protein": 0, "fruit": 1, "veg": 1, "leafy": 2, "noodle": 2, "grain": 2, "bread": 3, "cheese": 3,
             "sweet": 3, "nut": 4, "herb": 4, "sauce": 5, "pasta": 2}

_UNITS_LONG = {"cup": ("cup", "cups"), "tbsp": ("tablespoon", "tablespoons"), "tsp": ("teaspoon", "teaspoons"),
               "lb": ("pound", "pounds"), "oz": ("ounce", "ounces"), "clove": ("clove", "cloves"),
               "can": ("(15 ounce) can", "(15 ounce) cans"), "slice": ("slice", "slices"),
               "bunch": ("bunch", "bunches"), "head": ("head", "heads"), "g": ("g", "g")}
_UNITS_SHORT = {"cup": ("c.", "c."), "tbsp": ("tbsp", "tbsp"), "tsp": ("tsp", "tsp"), "lb": ("lb", "lbs"),
                "oz": ("oz", "oz")}
_FRACTIONS = {0.25: "1/4", 0.5: "1/2", 0.75: "3/4", 1 / 3: "1/3", 2 / 3: "2/3"}
_FILLERS = ("Serve immediately.", "Enjoy!", "Let cool slightly before serving.", "Serve warm.",
            "Leftovers keep in the fridge for up to 3 days.")


@dataclass(frozen=True)
class RecipeSpec:
    """One generated recipe: its text (as layer1/det_ingrs write it) and what its photos show."""

    index: int
    id: str
    family: int
    partition: str
    dish: str
    container: str
    base: str
    sauce: str | None
    items: tuple[tuple[str, float], ...]  # visible toppings and their amounts (1.0 = the usual quantity)
    title: str
    ingredient_lines: tuple[str, ...]
    ingredient_names: tuple[str, ...]  # det_ingrs text, one per line
    ingredient_valid: tuple[bool, ...]
    instructions: tuple[str, ...]
    image_ids: tuple[str, ...]


def _hex_id(*parts: object) -> str:
    return hashlib.sha1(":".join(str(p) for p in ("malm-synth", *parts)).encode()).hexdigest()[:10]


class _UniqueIds:
    """10-hex ids as Recipe1M's; 40 bits collide by chance around a million ids, so re-hash on a clash."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: object) -> str:
        new = _hex_id(*parts)
        attempt = 0
        while new in self.used:
            attempt += 1
            new = _hex_id(*parts, "again", attempt)
        self.used.add(new)
        return new


def _weighted_pick(rng: np.random.Generator, pool: list[str], k: int) -> list[str]:
    """k distinct names from pool, each with its catalogue weight (rare ingredients are rarely picked)."""
    k = min(k, len(pool))
    if k <= 0:
        return []
    w = np.array([INGREDIENTS[n].weight for n in pool], dtype=np.float64)
    idx = rng.choice(len(pool), size=k, replace=False, p=w / w.sum())
    return [pool[i] for i in idx]


def _amount(rng: np.random.Generator) -> float:
    return float(AMOUNTS[rng.choice(len(AMOUNTS), p=AMOUNT_PROBS)])


@dataclass
class _Core:
    dish: Dish
    container: str
    base: str
    sauce: str | None
    items: list[tuple[str, float]]


def _new_core(rng: np.random.Generator) -> _Core:
    names = list(DISH_WEIGHTS)
    w = np.array([DISH_WEIGHTS[n] for n in names])
    dish = DISHES[names[rng.choice(len(names), p=w / w.sum())]]
    container = dish.containers[rng.integers(len(dish.containers))]
    base = dish.bases[rng.integers(len(dish.bases))]
    sauce = dish.sauces[rng.integers(len(dish.sauces))] if dish.sauces and rng.random() < dish.sauce_prob else None
    lo, hi = dish.n_toppings
    pool = [n for n in dish.toppings if n != base]
    tops = _weighted_pick(rng, pool, int(rng.integers(lo, hi + 1)))
    return _Core(dish, container, base, sauce, [(n, _amount(rng)) for n in tops])


def _variant(core: _Core, rng: np.random.Generator) -> _Core:
    """A near-duplicate: one or two edits to the core's ingredients."""
    dish = core.dish
    items = list(core.items)
    base, sauce = core.base, core.sauce
    lo, hi = dish.n_toppings
    for _ in range(1 + int(rng.random() < 0.35)):
        used = {n for n, _ in items} | {base}
        free = [n for n in dish.toppings if n not in used]
        r = rng.random()
        if r < 0.5 and items and free:  # swap one ingredient for another
            j = int(rng.integers(len(items)))
            items[j] = (_weighted_pick(rng, free, 1)[0], items[j][1])
        elif r < 0.7 and len(items) < hi + 1 and free:
            items.append((_weighted_pick(rng, free, 1)[0], _amount(rng)))
        elif r < 0.85 and len(items) > max(lo, 1):
            items.pop(int(rng.integers(len(items))))
        elif len(dish.bases) > 1 and rng.random() < 0.5:
            others = [b for b in dish.bases if b != base and b not in {n for n, _ in items}]
            base = others[int(rng.integers(len(others)))] if others else base
        elif dish.sauces:
            options = [s for s in (*dish.sauces, None) if s != sauce]
            sauce = options[int(rng.integers(len(options)))]
        elif items:  # nothing else to change: a different quantity, still visible as more or fewer pieces
            j = int(rng.integers(len(items)))
            items[j] = (items[j][0], 2.0 if items[j][1] <= 1.0 else 0.5)
    return _Core(dish, core.container, base, sauce, items)


def _fmt_qty(q: float) -> str:
    whole = int(q)
    frac = q - whole
    if frac < 1e-6:
        return str(whole)
    best = min(_FRACTIONS, key=lambda f: abs(f - frac))
    return f"{whole} {_FRACTIONS[best]}" if whole else _FRACTIONS[best]


def _singular(name: str) -> str:
    if name.endswith("oes"):
        return name[:-2]
    if name.endswith("shes"):
        return name[:-2]
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def _line(name: str, amount: float, rng: np.random.Generator, short_units: bool) -> str:
    ing = INGREDIENTS[name]
    if name == "salt" and rng.random() < 0.5:
        return "salt and pepper to taste" if rng.random() < 0.5 else "salt to taste"
    if ing.unit == "":
        n = max(1, int(round(ing.qty * amount)))
        text = f"{n} {_singular(name) if n == 1 else (name if name.endswith('s') else name + 's')}"
    else:
        q = ing.qty * amount
        q = max(0.25, round(q * 4) / 4) if ing.unit in ("cup", "tbsp", "tsp", "lb", "can", "bunch", "head") \
            else max(1.0, float(round(q)))
        units = _UNITS_SHORT if short_units and ing.unit in _UNITS_SHORT else _UNITS_LONG
        unit = units[ing.unit][0 if q <= 1 else 1]
        text = f"{_fmt_qty(q)} {unit} {name}"
    if ing.preps and rng.random() < 0.75:
        text += f", {ing.preps[int(rng.integers(len(ing.preps)))]}"
    return text


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _title(core: _Core, style: str, n_main: int, noun_i: int) -> str:
    tops = sorted(core.items, key=lambda it: _SALIENCE[INGREDIENTS[it[0]].category])
    mains = [INGREDIENTS[n].title for n, _ in tops[:n_main]]
    noun = core.dish.nouns[noun_i % len(core.dish.nouns)].replace("{base}", INGREDIENTS[core.base].title)
    if core.sauce is not None and core.dish.name in ("pasta", "stir-fry") and len(mains) > 1:
        mains[-1] = INGREDIENTS[core.sauce].title
    words: list[str] = []
    for w in " ".join([style, *mains, noun]).split():
        if w not in words:  # "Tomato Tomato Soup" reads as a bug, not as a recipe
            words.append(w)
    return " ".join(words)


def _instructions(core: _Core, rng: np.random.Generator) -> list[str]:
    cats = {n: INGREDIENTS[n].category for n, _ in core.items}
    groups = {
        "base": [core.base],
        "sauce": [core.sauce] if core.sauce else [],
        "protein": [n for n, c in cats.items() if c == "protein"],
        "veg": [n for n, c in cats.items() if c in ("veg", "leafy", "grain", "noodle", "bread")
                or (c == "fruit" and core.dish.name != "dessert")],
        "fruit": [n for n, c in cats.items() if c == "fruit"],
        "garnish": [n for n, c in cats.items() if c in GARNISH_CATEGORIES or c == "sweet"],
        "all": [n for n, _ in core.items],
    }
    out: list[str] = []
    for template, prob in core.dish.steps:
        if rng.random() >= prob:
            continue
        needed = [g for g in groups if "{" + g + "}" in template]
        if any(not groups[g] for g in needed):
            continue
        text = template.format(**{g: _join(groups[g]) for g in needed}, n=int(rng.integers(3, 16)),
                               t=int(rng.choice([400, 425, 450, 475])))
        if out and rng.random() < 0.15:
            text = ("Meanwhile, " if rng.random() < 0.5 else "Next, ") + text[0].lower() + text[1:]
        out.append(text)
    while len(out) < 3:
        out.append(_FILLERS[int(rng.integers(len(_FILLERS)))])
    return out[:12]


def _text(core: _Core, rng: np.random.Generator) -> tuple[list[str], list[str], list[bool]]:
    short = bool(rng.random() < 0.3)
    lines: list[tuple[str, str]] = [(core.base, _line(core.base, 1.0, rng, short))]
    lines += [(n, _line(n, a, rng, short)) for n, a in core.items]
    if core.sauce is not None:
        lines.append((core.sauce, _line(core.sauce, 1.0, rng, short)))
    pantry = list(core.dish.pantry)
    for j in rng.permutation(len(pantry))[: int(rng.integers(2, 6))]:
        pos = int(rng.integers(1, len(lines) + 1))
        lines.insert(pos, (pantry[j], _line(pantry[j], 1.0, rng, short)))
    names = [n for n, _ in lines]
    texts = [t for _, t in lines]
    # Recipe1M's ingredient detector misses a few lines: it keeps the raw line and marks it invalid.
    valid = [bool(rng.random() >= 0.03) for _ in lines]
    names = [n if v else t.lower() for n, t, v in zip(names, texts, valid, strict=True)]
    return texts, names, valid


def generate_recipes(n_recipes: int, seed: int) -> list[RecipeSpec]:
    """The whole recipe list for a seed, in index order (cheap: no drawing happens here)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    out: list[RecipeSpec] = []
    recipe_ids, image_ids = _UniqueIds(), _UniqueIds()
    family = 0
    while len(out) < n_recipes:
        core = _new_core(rng)
        size = int(FAMILY_SIZES[rng.choice(len(FAMILY_SIZES), p=FAMILY_PROBS)])
        partition = PARTITIONS[rng.choice(3, p=PARTITION_PROBS)]
        style = STYLES[int(rng.integers(len(STYLES)))]
        n_main = int(rng.integers(1, 3))
        noun_i = int(rng.integers(8))
        for member in range(min(size, n_recipes - len(out))):
            c = core if member == 0 else _variant(core, rng)
            st = style if rng.random() < 0.7 else STYLES[int(rng.integers(len(STYLES)))]
            lines, names, valid = _text(c, rng)
            index = len(out)
            n_photos = int(PHOTO_COUNTS[rng.choice(len(PHOTO_COUNTS), p=PHOTO_PROBS)])
            out.append(RecipeSpec(
                index=index, id=recipe_ids(seed, index), family=family, partition=partition, dish=c.dish.name,
                container=c.container, base=c.base, sauce=c.sauce, items=tuple(c.items),
                title=_title(c, st, n_main, noun_i), ingredient_lines=tuple(lines),
                ingredient_names=tuple(names), ingredient_valid=tuple(valid),
                instructions=tuple(_instructions(c, rng)),
                image_ids=tuple(image_ids(seed, index, "img", k) + ".jpg" for k in range(n_photos)),
            ))
        family += 1
    return out
