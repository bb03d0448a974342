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

# The drawing primitives (colours, geometry, one ingredient piece) live in pieces.py, shared by this module only.
from malm.training.synth.pieces import _blob_points, _curve, _ellipse, _jitter, _mix, _rot, _scale, draw_piece

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
    # One random stream for the whole photo: the stages below draw from it in this order (background, frame,
    # container, base, toppings, camera), so changing that order changes every generated photo.
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
    rf = _draw_container(d, spec.container, rnd, cx, cy, R, shadow)
    c = _Canvas(d, rnd, cx, cy, rf, k, set())
    items = list(spec.items)
    regions = _draw_base(c, spec, items)
    _draw_toppings(c, spec, items, regions)
    return _camera(img, spec.size, rnd, rng), tuple(sorted(c.drawn))


_Region = tuple[float, float, float]  # (x, y, radius) of a disk that pieces are scattered in


@dataclass(frozen=True)
class _Canvas:
    """One photo being drawn: where the food sits, its scale, the photo's random stream and what was drawn."""

    d: ImageDraw.ImageDraw
    rnd: random.Random
    cx: float
    cy: float
    rf: float  # the food's radius, inside the container
    k: float  # canvas px per catalogue px
    drawn: set[str]  # ingredients put on the canvas (render_logged's log)

    def fill_color(self, name: str) -> RGB:
        self.drawn.add(name)
        return INGREDIENTS[name].color

    def pieces(self, name: str, amount: float, regions: list[_Region]) -> None:
        _draw_pieces(self.d, name, amount, regions, self.k, self.rnd, self.drawn)


def _draw_container(d: ImageDraw.ImageDraw, container: str, rnd: random.Random, cx: float, cy: float, R: float,
                    shadow: RGB) -> float:
    """The board, skillet, plate or bowl with its shadow; returns the radius the food fills inside it."""
    if container == "board":
        wood = _jitter(_BOARDS[rnd.randrange(len(_BOARDS))], rnd)
        a = rnd.uniform(0, math.pi)
        corners = [(-1.05 * R, -0.95 * R), (1.05 * R, -0.95 * R), (1.05 * R, 0.95 * R), (-1.05 * R, 0.95 * R)]
        d.polygon(_rot(corners, cx + 0.05 * R, cy + 0.07 * R, a), fill=shadow)
        d.polygon(_rot(corners, cx, cy, a), fill=wood)
        for j in range(-3, 4):  # grain lines
            d.line(_rot([(-R, j * 0.25 * R), (R, j * 0.25 * R)], cx, cy, a), fill=_scale(wood, 0.88), width=2)
        return 0.86 * R
    if container == "skillet":
        a = rnd.uniform(0, 2 * math.pi)
        _ellipse(d, cx + 0.06 * R, cy + 0.08 * R, R, R, fill=shadow)
        d.line(_rot([(0.9 * R, 0), (1.6 * R, 0)], cx, cy, a), fill=(35, 35, 38), width=int(0.2 * R))
        _ellipse(d, cx, cy, R, R, fill=(45, 45, 48))
        _ellipse(d, cx, cy, 0.9 * R, 0.9 * R, fill=(60, 60, 64))
        return 0.8 * R
    plate = _jitter(_PLATES[rnd.randrange(len(_PLATES))], rnd, 6)
    _ellipse(d, cx + 0.06 * R, cy + 0.08 * R, R, R, fill=shadow)
    _ellipse(d, cx, cy, R, R, fill=plate)
    if container == "bowl":
        _ellipse(d, cx, cy, 0.86 * R, 0.86 * R, fill=_scale(plate, 0.78))
        return 0.8 * R
    _ellipse(d, cx, cy, 0.78 * R, 0.78 * R, fill=_scale(plate, 0.94))
    return 0.74 * R


def _draw_base(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    """The dish's base (sauce and pasta, soup, crust, bread...); returns the regions its toppings go in.
    A curry's rice is drawn here as a mound beside it and taken out of `items`."""
    draw = _BASES.get(spec.dish)
    return draw(c, spec, items) if draw else [(c.cx, c.cy, 0.85 * c.rf)]


def _base_pasta(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    d, rnd, cx, cy, rf = c.d, c.rnd, c.cx, c.cy, c.rf
    if spec.sauce:
        d.polygon(_blob_points(cx, cy, 0.8 * rf, rnd, 12), fill=c.fill_color(spec.sauce))
    c.pieces(spec.base, 1.0, [(cx, cy, 0.78 * rf)])
    if spec.sauce:
        for _ in range(6):
            sx, sy = _in_disk(rnd, cx, cy, 0.6 * rf)
            d.polygon(_blob_points(sx, sy, 0.14 * rf, rnd), fill=c.fill_color(spec.sauce))
    return [(cx, cy, 0.7 * rf)]


def _base_salad(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    c.pieces(spec.base, 1.0, [(c.cx, c.cy, 0.85 * c.rf)])
    return [(c.cx, c.cy, 0.75 * c.rf)]


def _base_soup(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    d, rnd, cx, cy, rf = c.d, c.rnd, c.cx, c.cy, c.rf
    fill = c.fill_color(spec.base)
    _ellipse(d, cx, cy, rf, rf, fill=fill)
    _ellipse(d, cx + 0.2 * rf, cy - 0.15 * rf, 0.4 * rf, 0.3 * rf, fill=_mix(fill, INGREDIENTS[spec.base].color2, 0.6))
    grains = [it for it in items if INGREDIENTS[it[0]].shape == "grain" and INGREDIENTS[it[0]].count >= 100]
    for name, amount in grains:  # rice served on the side of a curry: one mound
        side = rnd.uniform(0, 2 * math.pi)
        mx, my = cx + 0.45 * rf * math.cos(side), cy + 0.45 * rf * math.sin(side)
        _ellipse(d, mx, my, 0.45 * rf, 0.45 * rf, fill=c.fill_color(name))
        c.pieces(name, amount * 0.5, [(mx, my, 0.4 * rf)])
        items.remove((name, amount))
    return [(cx, cy, 0.8 * rf)]


def _base_bowl(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    base = INGREDIENTS[spec.base]
    c.drawn.add(spec.base)
    _ellipse(c.d, c.cx, c.cy, c.rf, c.rf, fill=_mix(base.color, base.color2, 0.3))
    c.pieces(spec.base, 0.6, [(c.cx, c.cy, 0.95 * c.rf)])
    return [(c.cx, c.cy, 0.85 * c.rf)]


def _base_dessert(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    d, cx, cy, rf = c.d, c.cx, c.cy, c.rf
    base = INGREDIENTS[spec.base]
    c.drawn.add(spec.base)
    if spec.base == "pancake mix":
        for j in range(3, 0, -1):
            _ellipse(d, cx, cy + j * 0.05 * rf, 0.75 * rf, 0.7 * rf, fill=base.color2)
            _ellipse(d, cx, cy + j * 0.05 * rf - 0.04 * rf, 0.72 * rf, 0.66 * rf, fill=base.color)
    else:
        _ellipse(d, cx, cy, rf, rf, fill=base.color)
        _ellipse(d, cx - 0.2 * rf, cy - 0.2 * rf, 0.35 * rf, 0.3 * rf, fill=base.color2)
    return [(cx, cy, 0.6 * rf)]


def _base_pizza(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    d, rnd, cx, cy, rf = c.d, c.rnd, c.cx, c.cy, c.rf
    _ellipse(d, cx, cy, rf, rf, fill=_CRUST_EDGE)
    _ellipse(d, cx, cy, 0.95 * rf, 0.95 * rf, fill=_CRUST)
    _ellipse(d, cx, cy, 0.84 * rf, 0.84 * rf, fill=c.fill_color(spec.base))
    for _ in range(rnd.randint(6, 9)):
        mx, my = _in_disk(rnd, cx, cy, 0.65 * rf)
        d.polygon(_blob_points(mx, my, 0.15 * rf, rnd), fill=_MOZZARELLA)
    return [(cx, cy, 0.72 * rf)]


def _base_stir_fry(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    if spec.sauce:
        c.d.polygon(_blob_points(c.cx, c.cy, 0.85 * c.rf, c.rnd, 12), fill=c.fill_color(spec.sauce))
    c.pieces(spec.base, 0.8, [(c.cx, c.cy, 0.8 * c.rf)])
    return [(c.cx, c.cy, 0.75 * c.rf)]


def _base_sandwich(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    d, rnd, cx, cy, rf = c.d, c.rnd, c.cx, c.cy, c.rf
    base = INGREDIENTS[spec.base]
    c.drawn.add(spec.base)
    a = rnd.uniform(-0.4, 0.4)
    regions: list[_Region] = []
    for side in (-1, 1):
        sx, sy = cx + side * 0.48 * rf * math.cos(a), cy + side * 0.48 * rf * math.sin(a)
        sq = [(-0.45 * rf, -0.5 * rf), (0.45 * rf, -0.5 * rf), (0.45 * rf, 0.45 * rf), (-0.45 * rf, 0.45 * rf)]
        d.polygon(_rot(sq, sx, sy, a), fill=base.color2)
        d.polygon(_rot([(0.88 * px, 0.88 * py) for px, py in sq], sx, sy, a), fill=base.color)
        regions.append((sx, sy, 0.33 * rf))
    return regions


def _base_tacos(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]]) -> list[_Region]:
    d, rnd, cx, cy, rf = c.d, c.rnd, c.cx, c.cy, c.rf
    base = INGREDIENTS[spec.base]
    c.drawn.add(spec.base)
    n = rnd.randint(2, 3)
    a0 = rnd.uniform(0, 2 * math.pi)
    regions: list[_Region] = []
    for j in range(n):
        t = a0 + 2 * math.pi * j / n
        tx, ty = cx + 0.45 * rf * math.cos(t), cy + 0.45 * rf * math.sin(t)
        _ellipse(d, tx, ty, 0.5 * rf, 0.5 * rf, fill=base.color2)
        _ellipse(d, tx, ty, 0.46 * rf, 0.46 * rf, fill=base.color)
        regions.append((tx, ty, 0.32 * rf))
    return regions


_BASES = {
    "pasta": _base_pasta, "salad": _base_salad, "soup": _base_soup, "curry": _base_soup, "bowl": _base_bowl,
    "dessert": _base_dessert, "pizza": _base_pizza, "stir-fry": _base_stir_fry, "sandwich": _base_sandwich,
    "tacos": _base_tacos,
}


def _draw_toppings(c: _Canvas, spec: PhotoSpec, items: list[tuple[str, float]], regions: list[_Region]) -> None:
    """The ingredients on the base, bottom layer first, then the sauce when it is drizzled or dolloped."""
    rnd, cx, cy, rf = c.rnd, c.cx, c.cy, c.rf
    if spec.dish == "bowl":  # each topping in its own sector, as grain bowls are plated
        order = items[:]
        start = rnd.uniform(0, 2 * math.pi)
        width = 2 * math.pi / max(1, len(order))
        for j, (name, amount) in enumerate(order):
            mid = start + (j + 0.5) * width
            sub = [(cx + 0.55 * rf * math.cos(mid + o * width * 0.25), cy + 0.55 * rf * math.sin(mid + o * width * 0.25),
                    0.28 * rf) for o in (-1, 0, 1)]
            c.pieces(name, amount, sub)
        if spec.sauce:
            for _ in range(2):
                sx, sy = _in_disk(rnd, cx, cy, 0.3 * rf)
                c.d.line(_curve(sx, sy, 1.1 * rf, rnd.uniform(0, 6.3), rnd, 0.9, 6),
                         fill=c.fill_color(spec.sauce), width=max(2, int(3 * c.k)), joint="curve")
        return
    order = sorted(items, key=lambda it: _LAYER.get(INGREDIENTS[it[0]].category, 2))
    for name, amount in order:
        ing = INGREDIENTS[name]
        if ing.category == "fruit" and ing.shape == "wedge" and spec.dish not in ("dessert",):
            # citrus wedges sit on the rim, beside the food
            t = rnd.uniform(0, 2 * math.pi)
            c.pieces(name, amount, [(cx + 0.85 * rf * math.cos(t), cy + 0.85 * rf * math.sin(t), 0.1 * rf)])
        elif ing.shape == "grain" and ing.count >= 100:
            c.pieces(name, amount * 0.5, [regions[0][:2] + (0.4 * rf,)])
        else:
            c.pieces(name, amount, regions)
    if spec.sauce and INGREDIENTS[spec.sauce].shape in ("drizzle", "blob"):
        c.pieces(spec.sauce, 1.0, regions)


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
