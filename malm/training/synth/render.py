"""Drawing one food photo with PIL: background, container, the dish's base, its ingredients, light and camera.

Drawn at twice the asked size and reduced (cheap anti-aliasing). Everything random comes from one
`random.Random` seeded from (seed, recipe index, photo index), so a photo does not depend on which worker drew
it or in what order. `render_logged` also says which ingredients were put on the canvas (pieces, fills or
colour areas); ingredients the catalogue never draws (spices, oil) are absent from that log.
"""

from __future__ import annotations

import functools
import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from malm.training.synth.ingredients import INGREDIENTS, RGB

SUPERSAMPLE = 2

_BACKGROUNDS: tuple[RGB, ...] = (
    (150, 105, 65), (185, 140, 95), (110, 75, 50), (225, 220, 210), (240, 236, 228), (120, 125, 130),
    (60, 62, 66), (200, 215, 225), (215, 200, 170), (170, 190, 165), (235, 225, 200), (90, 60, 45),
)
_PLATES: tuple[RGB, ...] = (
    (250, 250, 248), (245, 240, 230), (225, 228, 232), (70, 100, 150), (40, 40, 45), (200, 110, 75),
    (235, 235, 215), (120, 160, 150),
)
_BOARDS: tuple[RGB, ...] = ((190, 140, 90), (160, 110, 65), (215, 175, 120), (130, 90, 55))
_CRUST: RGB = (220, 165, 90)
_CRUST_EDGE: RGB = (185, 120, 55)
_MOZZARELLA: RGB = (252, 248, 232)

# Draw order of topping categories: big pieces first, small garnish on top.
_LAYER = {"leafy": 0, "grain": 0, "noodle": 0, "pasta": 0, "bread": 1, "protein": 1, "veg": 1, "fruit": 2,
          "sauce": 2, "cheese": 3, "sweet": 3, "nut": 4, "herb": 5}


@dataclass(frozen=True)
class PhotoSpec:
    """What one photo shows; picklable, so a worker process can draw it."""

    dish: str
    container: str
    base: str
    sauce: str | None
    items: tuple[tuple[str, float], ...]
    seed: int  # the photo's own seed (from seed, recipe index, photo index)
    size: int
    path: str  # where the JPEG goes


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def _scale(c: RGB, f: float) -> RGB:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def _jitter(c: RGB, r: random.Random, amount: int = 10) -> RGB:
    return tuple(max(0, min(255, v + r.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


def _rot(points: list[tuple[float, float]], x: float, y: float, a: float) -> list[tuple[float, float]]:
    ca, sa = math.cos(a), math.sin(a)
    return [(x + px * ca - py * sa, y + px * sa + py * ca) for px, py in points]


def _ellipse(d: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float, fill: RGB | None = None,
             outline: RGB | None = None, width: int = 1) -> None:
    # Tiny image sizes can round a radius below zero; PIL refuses an inverted box.
    rx, ry = abs(rx), abs(ry)
    d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill, outline=outline, width=width)


def _blob_points(x: float, y: float, r: float, rnd: random.Random, n: int = 9) -> list[tuple[float, float]]:
    return [(x + r * rnd.uniform(0.75, 1.15) * math.cos(2 * math.pi * i / n),
             y + r * rnd.uniform(0.75, 1.15) * math.sin(2 * math.pi * i / n)) for i in range(n)]


def _curve(x: float, y: float, length: float, a: float, rnd: random.Random, wiggle: float = 0.6,
           segments: int = 5) -> list[tuple[float, float]]:
    pts = [(x, y)]
    step = length / segments
    for _ in range(segments):
        a += rnd.uniform(-wiggle, wiggle)
        x += step * math.cos(a)
        y += step * math.sin(a)
        pts.append((x, y))
    return pts


def draw_piece(d: ImageDraw.ImageDraw, shape: str, x: float, y: float, s: float, c: RGB, c2: RGB,
               rnd: random.Random) -> None:
    """One piece of an ingredient, `s` px across, centred at (x, y)."""
    a = rnd.uniform(0, 2 * math.pi)
    h = s / 2
    if shape == "circle":
        _ellipse(d, x, y, h, h, fill=c)
        _ellipse(d, x - 0.3 * h, y - 0.3 * h, 0.3 * h, 0.3 * h, fill=c2)
    elif shape == "half":
        deg = math.degrees(a)
        d.chord((x - h, y - h, x + h, y + h), deg, deg + 180, fill=c)
        d.chord((x - 0.7 * h, y - 0.7 * h, x + 0.7 * h, y + 0.7 * h), deg, deg + 180, fill=c2)
    elif shape == "disk":
        _ellipse(d, x, y, h, h, fill=c)
        _ellipse(d, x, y, 0.75 * h, 0.75 * h, fill=_mix(c, c2, 0.45))
        for _ in range(4):
            _ellipse(d, x + rnd.uniform(-0.45, 0.45) * h, y + rnd.uniform(-0.45, 0.45) * h, 0.12 * h + 0.5,
                     0.12 * h + 0.5, fill=c2)
    elif shape == "ring":
        w = max(2, int(0.3 * h))
        _ellipse(d, x, y, h, h, outline=c, width=w)
        _ellipse(d, x, y, h - w, h - w, outline=c2, width=max(1, w // 2))
    elif shape == "strand":
        pts = _curve(x - 0.5 * s * math.cos(a), y - 0.5 * s * math.sin(a), s, a, rnd)
        w = max(2, int(0.11 * s))
        d.line(pts, fill=c, width=w, joint="curve")
        d.line(pts, fill=c2, width=max(1, w // 3))
    elif shape == "tube":
        pts = _rot([(-0.8 * s, -0.3 * s), (0.8 * s, -0.3 * s), (0.8 * s, 0.3 * s), (-0.8 * s, 0.3 * s)], x, y, a)
        d.polygon(pts, fill=c)
        d.line(_rot([(-0.7 * s, 0), (0.7 * s, 0)], x, y, a), fill=c2, width=max(1, int(0.12 * s)))
    elif shape == "bowtie":
        tri1 = _rot([(0, 0), (-0.8 * s, -0.5 * s), (-0.8 * s, 0.5 * s)], x, y, a)
        tri2 = _rot([(0, 0), (0.8 * s, -0.5 * s), (0.8 * s, 0.5 * s)], x, y, a)
        d.polygon(tri1, fill=c)
        d.polygon(tri2, fill=c)
        _ellipse(d, x, y, 0.2 * s, 0.2 * s, fill=c2)
    elif shape == "leaf":
        pts = [(-0.9 * s, 0), (-0.5 * s, -0.35 * s), (0, -0.45 * s), (0.5 * s, -0.3 * s), (0.9 * s, 0),
               (0.5 * s, 0.3 * s), (0, 0.45 * s), (-0.5 * s, 0.35 * s)]
        d.polygon(_rot(pts, x, y, a), fill=c)
        d.line(_rot([(-0.8 * s, 0), (0.7 * s, 0)], x, y, a), fill=c2, width=max(1, int(0.08 * s)))
    elif shape == "floret":
        d.line(_rot([(0, 0), (0.6 * s, 0)], x, y, a), fill=_mix(c, (220, 230, 180), 0.5),
               width=max(2, int(0.25 * s)))
        for dx, dy in ((-0.2, -0.25), (-0.2, 0.25), (-0.45, 0), (0.05, 0), (-0.35, -0.45), (-0.35, 0.45)):
            (px, py), = _rot([(dx * s, dy * s)], x, y, a)
            _ellipse(d, px, py, 0.24 * s, 0.24 * s, fill=c)
            _ellipse(d, px - 0.06 * s, py - 0.06 * s, 0.08 * s, 0.08 * s, fill=c2)
    elif shape == "cube":
        d.polygon(_rot([(-h, -h), (h, -h), (h, h), (-h, h)], x, y, a), fill=c)
        d.polygon(_rot([(-h, -h), (0.2 * h, -h), (0.2 * h, -0.2 * h), (-h, -0.2 * h)], x, y, a), fill=c2)
    elif shape == "strip":
        hw = 0.2 * s
        d.polygon(_rot([(-h, -hw), (h, -hw), (h, hw), (-h, hw)], x, y, a), fill=c)
        d.line(_rot([(-0.85 * h, 0), (0.85 * h, 0)], x, y, a), fill=c2, width=max(1, int(0.35 * hw)))
    elif shape == "grain":
        if rnd.random() < 0.5:
            _ellipse(d, x, y, 0.7 * h, 0.4 * h, fill=c if rnd.random() < 0.8 else c2)
        else:
            _ellipse(d, x, y, 0.4 * h, 0.7 * h, fill=c if rnd.random() < 0.8 else c2)
    elif shape == "wedge":
        deg = math.degrees(a)
        d.pieslice((x - s, y - s, x + s, y + s), deg, deg + 70, fill=c)
        d.pieslice((x - 0.8 * s, y - 0.8 * s, x + 0.8 * s, y + 0.8 * s), deg + 5, deg + 65, fill=c2)
    elif shape == "crescent":
        deg = math.degrees(a)
        w = max(2, int(0.38 * s))
        d.arc((x - h, y - h, x + h, y + h), deg, deg + 220, fill=c, width=w)
        d.arc((x - h, y - h, x + h, y + h), deg, deg + 220, fill=c2, width=max(1, w // 4))
    elif shape == "blob":
        d.polygon(_blob_points(x, y, h, rnd), fill=c)
        _ellipse(d, x + 0.2 * h, y + 0.15 * h, 0.25 * h, 0.2 * h, fill=c2)
    elif shape == "dots":
        for _ in range(4):
            _ellipse(d, x + rnd.uniform(-h, h), y + rnd.uniform(-h, h), 0.2 * s, 0.2 * s, fill=c)
    elif shape == "egg":
        _ellipse(d, x, y, 0.65 * s, 0.5 * s, fill=c)
        _ellipse(d, x + 0.05 * s, y, 0.26 * s, 0.26 * s, fill=c2)
    elif shape == "oval":
        pts = [(0.6 * s * math.cos(t), 0.32 * s * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 8, False)]
        d.polygon(_rot(pts, x, y, a), fill=c, outline=c2)
    elif shape == "star":
        pts = [((h if i % 2 == 0 else 0.45 * h) * math.cos(a + math.pi * i / 5),
                (h if i % 2 == 0 else 0.45 * h) * math.sin(a + math.pi * i / 5)) for i in range(10)]
        d.polygon([(x + px, y + py) for px, py in pts], fill=c)
        _ellipse(d, x, y, 0.2 * h, 0.2 * h, fill=c2)


def _background(size: int, rnd: random.Random, rng: np.random.Generator) -> Image.Image:
    c = np.array(_jitter(_BACKGROUNDS[rnd.randrange(len(_BACKGROUNDS))], rnd, 15), dtype=np.float32)
    kind = rnd.choice(("plain", "wood", "cloth", "marble"))
    img: np.ndarray
    low = size // 8 * 3 // 2  # drawn larger, rotated, then cropped: the table is seen at any angle
    if kind == "wood":
        yy = np.arange(low, dtype=np.float32)[:, None]
        f = 1 + 0.12 * np.sin(yy * rnd.uniform(0.8, 2.0) + rng.normal(0, 0.6, (low, low)).cumsum(1) * 0.3)
        img = c * f[..., None]
    elif kind == "cloth":
        period = rnd.randint(3, 6)
        yy, xx = np.mgrid[0:low, 0:low]
        check = (((yy // period) + (xx // period)) % 2).astype(np.float32)
        other = np.array(_jitter((245, 245, 240), rnd, 8), dtype=np.float32)
        img = c * check[..., None] + other * (1 - check[..., None])
    elif kind == "marble":
        n = rng.normal(0, 1, (low // 4 + 1, low // 4 + 1)).astype(np.float32)
        big = np.asarray(Image.fromarray(n).resize((low, low), Image.Resampling.BILINEAR))
        img = c * (1 + 0.07 * big[..., None])
    else:
        img = np.broadcast_to(c, (low, low, 3)).copy()
    img = img + rng.normal(0, 3, img.shape).astype(np.float32)
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).rotate(rnd.uniform(0, 360), Image.Resampling.BILINEAR)
    m = low // 6
    small = small.crop((m, m, low - m, low - m))
    # NEAREST keeps cloth checks crisp; the final reduce smooths it all anyway.
    return small.resize((size, size), Image.Resampling.NEAREST if kind == "cloth" else Image.Resampling.BILINEAR)


def _in_disk(rnd: random.Random, x: float, y: float, r: float) -> tuple[float, float]:
    t = rnd.uniform(0, 2 * math.pi)
    rr = r * math.sqrt(rnd.random())
    return x + rr * math.cos(t), y + rr * math.sin(t)


def _draw_pieces(d: ImageDraw.ImageDraw, name: str, amount: float, regions: list[tuple[float, float, float]],
                 k: float, rnd: random.Random, drawn: set[str], max_pieces: int = 400) -> None:
    ing = INGREDIENTS[name]
    if ing.shape in ("fill", "none"):
        return
    drawn.add(name)  # at least one piece or stroke follows
    if ing.shape == "drizzle":
        x, y, r = regions[0]
        for _ in range(max(1, round(ing.count * amount))):
            sx, sy = _in_disk(rnd, x, y, 0.5 * r)
            pts = _curve(sx, sy, 1.2 * r, rnd.uniform(0, 2 * math.pi), rnd, wiggle=0.9, segments=6)
            d.line(pts, fill=ing.color, width=max(2, int(ing.size * k)), joint="curve")
        return
    n = min(max_pieces, max(1, round(ing.count * amount * rnd.uniform(0.85, 1.15))))
    c = _jitter(ing.color, rnd, 6)
    for _ in range(n):
        x, y, r = regions[rnd.randrange(len(regions))]
        px, py = _in_disk(rnd, x, y, r)
        draw_piece(d, ing.shape, px, py, ing.size * k * rnd.uniform(0.85, 1.15), c, ing.color2, rnd)


def render(spec: PhotoSpec) -> Image.Image:
    """Draw the photo of `spec` (an RGB image of spec.size × spec.size)."""
    return render_logged(spec)[0]


def render_logged(spec: PhotoSpec) -> tuple[Image.Image, tuple[str, ...]]:
    """The photo of `spec` and the ingredients drawn on it (sorted names; the same random draws as `render`)."""
    drawn: set[str] = set()

    def _fill_color(name: str) -> RGB:
        drawn.add(name)
        return INGREDIENTS[name].color

    def _pieces(d: ImageDraw.ImageDraw, name: str, amount: float, regions: list[tuple[float, float, float]],
                k: float, rnd: random.Random) -> None:
        _draw_pieces(d, name, amount, regions, k, rnd, drawn)

    rnd = random.Random(spec.seed)
    rng = np.random.default_rng(spec.seed)
    big = spec.size * SUPERSAMPLE
    img = _background(big, rnd, rng)
    d = ImageDraw.Draw(img)
    R = big * rnd.uniform(0.36, 0.46)  # scale: how much of the frame the dish fills
    cx = big / 2 + rnd.uniform(-0.07, 0.07) * big
    cy = big / 2 + rnd.uniform(-0.07, 0.07) * big
    k = R / (0.41 * 128)  # canvas px per catalogue px (sizes are for a dish of radius 0.41 in a 128 px photo)
    bg_mean = img.resize((1, 1)).getpixel((0, 0))
    shadow = _scale(bg_mean, 0.7)  # type: ignore[arg-type]

    # the container
    if spec.container == "board":
        wood = _jitter(_BOARDS[rnd.randrange(len(_BOARDS))], rnd)
        a = rnd.uniform(0, math.pi)
        corners = [(-1.05 * R, -0.95 * R), (1.05 * R, -0.95 * R), (1.05 * R, 0.95 * R), (-1.05 * R, 0.95 * R)]
        d.polygon(_rot(corners, cx + 0.05 * R, cy + 0.07 * R, a), fill=shadow)
        d.polygon(_rot(corners, cx, cy, a), fill=wood)
        for j in range(-3, 4):  # grain lines
            d.line(_rot([(-R, j * 0.25 * R), (R, j * 0.25 * R)], cx, cy, a), fill=_scale(wood, 0.88), width=2)
        rf = 0.86 * R
    elif spec.container == "skillet":
        a = rnd.uniform(0, 2 * math.pi)
        _ellipse(d, cx + 0.06 * R, cy + 0.08 * R, R, R, fill=shadow)
        d.line(_rot([(0.9 * R, 0), (1.6 * R, 0)], cx, cy, a), fill=(35, 35, 38), width=int(0.2 * R))
        _ellipse(d, cx, cy, R, R, fill=(45, 45, 48))
        _ellipse(d, cx, cy, 0.9 * R, 0.9 * R, fill=(60, 60, 64))
        rf = 0.8 * R
    else:
        plate = _jitter(_PLATES[rnd.randrange(len(_PLATES))], rnd, 6)
        _ellipse(d, cx + 0.06 * R, cy + 0.08 * R, R, R, fill=shadow)
        _ellipse(d, cx, cy, R, R, fill=plate)
        if spec.container == "bowl":
            _ellipse(d, cx, cy, 0.86 * R, 0.86 * R, fill=_scale(plate, 0.78))
            rf = 0.8 * R
        else:
            _ellipse(d, cx, cy, 0.78 * R, 0.78 * R, fill=_scale(plate, 0.94))
            rf = 0.74 * R

    items = list(spec.items)
    regions = [(cx, cy, 0.85 * rf)]
    dish = spec.dish
    if dish == "pasta":
        if spec.sauce:
            d.polygon(_blob_points(cx, cy, 0.8 * rf, rnd, 12), fill=_fill_color(spec.sauce))
        _pieces(d, spec.base, 1.0, [(cx, cy, 0.78 * rf)], k, rnd)
        if spec.sauce:
            for _ in range(6):
                sx, sy = _in_disk(rnd, cx, cy, 0.6 * rf)
                d.polygon(_blob_points(sx, sy, 0.14 * rf, rnd), fill=_fill_color(spec.sauce))
        regions = [(cx, cy, 0.7 * rf)]
    elif dish == "salad":
        _pieces(d, spec.base, 1.0, [(cx, cy, 0.85 * rf)], k, rnd)
        regions = [(cx, cy, 0.75 * rf)]
    elif dish in ("soup", "curry"):
        fill = _fill_color(spec.base)
        _ellipse(d, cx, cy, rf, rf, fill=fill)
        _ellipse(d, cx + 0.2 * rf, cy - 0.15 * rf, 0.4 * rf, 0.3 * rf, fill=_mix(fill, INGREDIENTS[spec.base].color2, 0.6))
        grains = [it for it in items if INGREDIENTS[it[0]].shape == "grain" and INGREDIENTS[it[0]].count >= 100]
        for name, amount in grains:  # rice served on the side of a curry: one mound
            side = rnd.uniform(0, 2 * math.pi)
            mx, my = cx + 0.45 * rf * math.cos(side), cy + 0.45 * rf * math.sin(side)
            _ellipse(d, mx, my, 0.45 * rf, 0.45 * rf, fill=_fill_color(name))
            _pieces(d, name, amount * 0.5, [(mx, my, 0.4 * rf)], k, rnd)
            items.remove((name, amount))
        regions = [(cx, cy, 0.8 * rf)]
    elif dish == "bowl":
        base = INGREDIENTS[spec.base]
        drawn.add(spec.base)
        _ellipse(d, cx, cy, rf, rf, fill=_mix(base.color, base.color2, 0.3))
        _pieces(d, spec.base, 0.6, [(cx, cy, 0.95 * rf)], k, rnd)
    elif dish == "dessert":
        base = INGREDIENTS[spec.base]
        drawn.add(spec.base)
        if spec.base == "pancake mix":
            for j in range(3, 0, -1):
                _ellipse(d, cx, cy + j * 0.05 * rf, 0.75 * rf, 0.7 * rf, fill=base.color2)
                _ellipse(d, cx, cy + j * 0.05 * rf - 0.04 * rf, 0.72 * rf, 0.66 * rf, fill=base.color)
        else:
            _ellipse(d, cx, cy, rf, rf, fill=base.color)
            _ellipse(d, cx - 0.2 * rf, cy - 0.2 * rf, 0.35 * rf, 0.3 * rf, fill=base.color2)
        regions = [(cx, cy, 0.6 * rf)]
    elif dish == "pizza":
        _ellipse(d, cx, cy, rf, rf, fill=_CRUST_EDGE)
        _ellipse(d, cx, cy, 0.95 * rf, 0.95 * rf, fill=_CRUST)
        _ellipse(d, cx, cy, 0.84 * rf, 0.84 * rf, fill=_fill_color(spec.base))
        for _ in range(rnd.randint(6, 9)):
            mx, my = _in_disk(rnd, cx, cy, 0.65 * rf)
            d.polygon(_blob_points(mx, my, 0.15 * rf, rnd), fill=_MOZZARELLA)
        regions = [(cx, cy, 0.72 * rf)]
    elif dish == "stir-fry":
        if spec.sauce:
            d.polygon(_blob_points(cx, cy, 0.85 * rf, rnd, 12), fill=_fill_color(spec.sauce))
        _pieces(d, spec.base, 0.8, [(cx, cy, 0.8 * rf)], k, rnd)
        regions = [(cx, cy, 0.75 * rf)]
    elif dish == "sandwich":
        base = INGREDIENTS[spec.base]
        drawn.add(spec.base)
        a = rnd.uniform(-0.4, 0.4)
        regions = []
        for side in (-1, 1):
            sx, sy = cx + side * 0.48 * rf * math.cos(a), cy + side * 0.48 * rf * math.sin(a)
            sq = [(-0.45 * rf, -0.5 * rf), (0.45 * rf, -0.5 * rf), (0.45 * rf, 0.45 * rf), (-0.45 * rf, 0.45 * rf)]
            d.polygon(_rot(sq, sx, sy, a), fill=base.color2)
            d.polygon(_rot([(0.88 * px, 0.88 * py) for px, py in sq], sx, sy, a), fill=base.color)
            regions.append((sx, sy, 0.33 * rf))
    elif dish == "tacos":
        base = INGREDIENTS[spec.base]
        drawn.add(spec.base)
        n = rnd.randint(2, 3)
        a0 = rnd.uniform(0, 2 * math.pi)
        regions = []
        for j in range(n):
            t = a0 + 2 * math.pi * j / n
            tx, ty = cx + 0.45 * rf * math.cos(t), cy + 0.45 * rf * math.sin(t)
            _ellipse(d, tx, ty, 0.5 * rf, 0.5 * rf, fill=base.color2)
            _ellipse(d, tx, ty, 0.46 * rf, 0.46 * rf, fill=base.color)
            regions.append((tx, ty, 0.32 * rf))

    # the toppings
    if dish == "bowl":  # each topping in its own sector, as grain bowls are plated
        order = items[:]
        start = rnd.uniform(0, 2 * math.pi)
        width = 2 * math.pi / max(1, len(order))
        for j, (name, amount) in enumerate(order):
            mid = start + (j + 0.5) * width
            sub = [(cx + 0.55 * rf * math.cos(mid + o * width * 0.25), cy + 0.55 * rf * math.sin(mid + o * width * 0.25),
                    0.28 * rf) for o in (-1, 0, 1)]
            _pieces(d, name, amount, sub, k, rnd)
        if spec.sauce:
            for _ in range(2):
                sx, sy = _in_disk(rnd, cx, cy, 0.3 * rf)
                d.line(_curve(sx, sy, 1.1 * rf, rnd.uniform(0, 6.3), rnd, 0.9, 6),
                       fill=_fill_color(spec.sauce), width=max(2, int(3 * k)), joint="curve")
    else:
        order = sorted(items, key=lambda it: _LAYER.get(INGREDIENTS[it[0]].category, 2))
        for name, amount in order:
            ing = INGREDIENTS[name]
            if ing.category == "fruit" and ing.shape == "wedge" and dish not in ("dessert",):
                # citrus wedges sit on the rim, beside the food
                t = rnd.uniform(0, 2 * math.pi)
                _pieces(d, name, amount, [(cx + 0.85 * rf * math.cos(t), cy + 0.85 * rf * math.sin(t), 0.1 * rf)],
                        k, rnd)
            elif ing.shape == "grain" and ing.count >= 100:
                _pieces(d, name, amount * 0.5, [regions[0][:2] + (0.4 * rf,)], k, rnd)
            else:
                _pieces(d, name, amount, regions, k, rnd)
        if spec.sauce and INGREDIENTS[spec.sauce].shape in ("drizzle", "blob"):
            _pieces(d, spec.sauce, 1.0, regions, k, rnd)

    return _camera(img, spec.size, rnd, rng), tuple(sorted(drawn))


@functools.lru_cache(maxsize=8)
def _radius2(size: int) -> np.ndarray:
    """Squared distance from the centre, in units of the image side (for the vignette)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return xx * xx + yy * yy


def _camera(img: Image.Image, size: int, rnd: random.Random, rng: np.random.Generator) -> Image.Image:
    """Light, colour cast, vignette, sensor noise and blur (rotation is drawn in: table grain, board, pieces)."""
    img = img.reduce(SUPERSAMPLE)
    arr = np.asarray(img, dtype=np.float32)
    gain = rnd.uniform(0.72, 1.2)
    cast = np.array([rnd.uniform(0.9, 1.1) for _ in range(3)], dtype=np.float32)
    vignette = 1 - rnd.uniform(0.0, 0.7) * _radius2(size)
    arr = np.asarray(arr * (gain * cast) * vignette[..., None], dtype=np.float32)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rnd.uniform(0.5, 4))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rnd.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rnd.uniform(0.3, 1.1)))
    return out


def encode_jpeg(img: Image.Image, seed: int) -> bytes:
    """JPEG bytes at a quality drawn from the photo's seed (60-95, as phone and web photos vary)."""
    quality = random.Random(seed ^ 0x5EED).randint(60, 95)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
