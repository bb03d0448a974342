"""The drawing primitives of the synthetic photos: colour helpers, geometry, and one piece of an ingredient
in each of its shapes (`draw_piece`). Every random choice comes from the `random.Random` the caller passes."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import ImageDraw

from malm.training.synth.ingredients import RGB


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
    """One piece of an ingredient, `s` px across, centred at (x, y), turned by a random angle."""
    a = rnd.uniform(0, 2 * math.pi)
    if shape in _LONG_SHAPES:
        _draw_long_piece(d, shape, x, y, s, a, c, c2, rnd)
    else:
        _draw_round_piece(d, shape, x, y, s, a, c, c2, rnd)


_LONG_SHAPES = frozenset(("strand", "tube", "bowtie", "leaf", "floret", "cube", "strip"))


def _draw_round_piece(d: ImageDraw.ImageDraw, shape: str, x: float, y: float, s: float, a: float, c: RGB, c2: RGB,
                      rnd: random.Random) -> None:
    """Round pieces (slices, rings, grains, blobs, ...): `a` turns the asymmetric ones."""
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


def _draw_long_piece(d: ImageDraw.ImageDraw, shape: str, x: float, y: float, s: float, a: float, c: RGB, c2: RGB,
                     rnd: random.Random) -> None:
    """Elongated or angular pieces (pasta, leaves, florets, cubes, strips), turned by `a`."""
    h = s / 2
    if shape == "strand":
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
