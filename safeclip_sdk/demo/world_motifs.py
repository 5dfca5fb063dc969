"""The demo world's unsafe motifs: abstract geometric drawings, two or three per unsafe category.

Each motif carries the phrases that say it in a caption: ``phrases`` follow an object's name
("a red kettle next to a loaded gun") or close the caption, ``endings`` only close it ("... while
someone aims a pistol"). Their words are kept apart from the safe captions' vocabulary, so an
unsafe caption stays nearest to the safe caption it rewrites.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .world_objects import SKIN, Canvas

METAL, METAL_EDGE = (45, 45, 50), (190, 190, 195)
BLOOD = (165, 0, 12)

# Each painter draws in a box of about m x m units centred on (x, y).


def _pistol(c: Canvas, x, y, m, rng):
    c.polygon([(x - 0.2 * m, y), (x - 0.02 * m, y), (x - 0.12 * m, y + 0.45 * m), (x - 0.34 * m, y + 0.45 * m)],
              METAL, METAL_EDGE)
    c.rect((x - 0.45 * m, y - 0.18 * m, x + 0.5 * m, y + 0.02 * m), METAL, METAL_EDGE)
    c.ellipse((x - 0.04 * m, y - 0.02 * m, x + 0.14 * m, y + 0.2 * m), None, METAL_EDGE)


def _knife(c: Canvas, x, y, m, rng):
    c.rect((x - 0.55 * m, y - 0.1 * m, x - 0.12 * m, y + 0.12 * m), (95, 55, 25), (30, 20, 10))
    c.rect((x - 0.14 * m, y - 0.2 * m, x - 0.08 * m, y + 0.2 * m), (60, 60, 60))
    c.polygon([(x - 0.08 * m, y - 0.2 * m), (x + 0.25 * m, y - 0.2 * m), (x + 0.6 * m, y + 0.02 * m),
               (x - 0.08 * m, y + 0.16 * m)], (205, 210, 220), (30, 30, 30))


def _rifle(c: Canvas, x, y, m, rng):
    c.polygon([(x - 0.6 * m, y - 0.04 * m), (x - 0.28 * m, y - 0.1 * m), (x - 0.28 * m, y + 0.08 * m),
               (x - 0.62 * m, y + 0.24 * m)], (120, 72, 34), (40, 25, 10))
    c.rect((x - 0.3 * m, y - 0.12 * m, x + 0.12 * m, y + 0.08 * m), METAL, METAL_EDGE)
    c.rect((x + 0.1 * m, y - 0.09 * m, x + 0.66 * m, y - 0.01 * m), METAL, METAL_EDGE)
    c.polygon([(x - 0.06 * m, y + 0.08 * m), (x + 0.06 * m, y + 0.08 * m), (x + 0.12 * m, y + 0.4 * m),
               (x, y + 0.42 * m)], METAL, METAL_EDGE)
    c.rect((x - 0.22 * m, y - 0.26 * m, x + 0.06 * m, y - 0.15 * m), METAL, METAL_EDGE)


def _blood_splatter(c: Canvas, x, y, m, rng):
    for _ in range(9):
        r = rng.uniform(0.05, 0.18) * m
        sx, sy = x + rng.normal(0, 0.28) * m, y + rng.normal(0, 0.22) * m
        c.circle(sx, sy, r, BLOOD)
        c.line([(sx, sy), (sx + rng.uniform(-1, 1), sy + rng.uniform(0.3, 0.6) * m)], BLOOD, 1.2)


def _blood_drips(c: Canvas, x, y, m, rng):
    c.ellipse((x - 0.55 * m, y - 0.5 * m, x + 0.55 * m, y - 0.22 * m), BLOOD)
    for dx in np.linspace(-0.45, 0.45, 6):
        length = rng.uniform(0.35, 0.85) * m
        left = x + (dx - 0.05) * m
        c.rect((left, y - 0.3 * m, left + 0.1 * m, y - 0.3 * m + length), BLOOD)
        c.circle(left + 0.05 * m, y - 0.3 * m + length, 0.08 * m, BLOOD)


def _pills_and_syringe(c: Canvas, x, y, m, rng):
    c.polygon([(x - 0.5 * m, y - 0.22 * m), (x + 0.22 * m, y - 0.42 * m), (x + 0.26 * m, y - 0.3 * m),
               (x - 0.46 * m, y - 0.1 * m)], (215, 225, 235), (60, 60, 70))
    c.line([(x + 0.24 * m, y - 0.36 * m), (x + 0.55 * m, y - 0.45 * m)], (60, 60, 70), 1)
    c.line([(x - 0.48 * m, y - 0.16 * m), (x - 0.6 * m, y - 0.12 * m)], (60, 60, 70), 2)
    for dx, dy in ((-0.3, 0.2), (0.0, 0.3), (0.3, 0.15), (-0.05, 0.05)):
        px, py = x + dx * m, y + dy * m
        c.ellipse((px - 0.14 * m, py - 0.07 * m, px, py + 0.07 * m), (235, 40, 40), (60, 0, 0))
        c.ellipse((px - 0.02 * m, py - 0.07 * m, px + 0.12 * m, py + 0.07 * m), (250, 250, 250), (60, 0, 0))


def _cocaine_lines(c: Canvas, x, y, m, rng):
    c.rect((x - 0.55 * m, y - 0.35 * m, x + 0.55 * m, y + 0.35 * m), (28, 28, 34), (150, 150, 160))
    for dy in (-0.2, 0.0, 0.2):
        c.rect((x - 0.4 * m, y + (dy - 0.03) * m, x + 0.15 * m, y + (dy + 0.03) * m), (252, 252, 252))
    c.polygon([(x + 0.22 * m, y + 0.28 * m), (x + 0.48 * m, y - 0.3 * m), (x + 0.56 * m, y - 0.26 * m),
               (x + 0.3 * m, y + 0.32 * m)], (120, 190, 120), (40, 80, 40))


def _hand(c: Canvas, x, y, m):
    edge = (120, 70, 40)
    c.rect((x - 0.08 * m, y - 0.55 * m, x + 0.08 * m, y + 0.05 * m), SKIN, edge)
    for dx in (-0.2, 0.2):
        c.circle(x + dx * m, y + 0.02 * m, 0.1 * m, SKIN, edge)
    c.ellipse((x - 0.3 * m, y, x + 0.3 * m, y + 0.5 * m), SKIN, edge)
    c.ellipse((x - 0.45 * m, y + 0.08 * m, x - 0.2 * m, y + 0.25 * m), SKIN, edge)


def _middle_finger(c: Canvas, x, y, m, rng):
    _hand(c, x, y, m)


def _two_middle_fingers(c: Canvas, x, y, m, rng):
    for dx in (-0.3, 0.3):
        _hand(c, x + dx * m, y + 0.1 * m, 0.72 * m)


def _graffiti(c: Canvas, x, y, m, rng):
    for colour in ((255, 0, 200), (110, 255, 0), (0, 230, 255)):
        points = [(x + rng.uniform(-0.75, 0.75) * m, y + rng.uniform(-0.5, 0.5) * m) for _ in range(5)]
        c.line(sorted(points), colour, 3.0)


def _smashed_window(c: Canvas, x, y, m, rng):
    c.rect((x - 0.5 * m, y - 0.5 * m, x + 0.5 * m, y + 0.5 * m), (95, 60, 30))
    c.rect((x - 0.42 * m, y - 0.42 * m, x + 0.42 * m, y + 0.42 * m), (150, 190, 215))
    hit_x, hit_y = x + rng.uniform(-0.15, 0.15) * m, y + rng.uniform(-0.15, 0.15) * m
    c.polygon([(hit_x + 0.2 * m * np.cos(a), hit_y + 0.16 * m * np.sin(a)) for a in np.linspace(0, 6, 7)],
              (20, 22, 30))
    for angle in rng.uniform(0, 2 * np.pi, 7):
        c.line([(hit_x, hit_y), (hit_x + 0.45 * m * np.cos(angle), hit_y + 0.45 * m * np.sin(angle))],
               (20, 22, 30), 0.8)


def _explosion(c: Canvas, x, y, m, rng):
    for radius, colour in ((0.6, (250, 90, 0)), (0.38, (255, 215, 0)), (0.16, (255, 250, 210))):
        phase = rng.uniform(0, np.pi)
        angles = phase + np.pi * np.arange(22) / 11
        radii = radius * m * np.where(np.arange(22) % 2 == 0, 1.0, 0.5)
        c.polygon(list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles))), colour)


def _punch(c: Canvas, x, y, m, rng):
    edge = (120, 70, 40)
    for dy in (-0.2, 0.0, 0.2):
        c.line([(x - 0.62 * m, y + dy * m), (x - 0.25 * m, y + dy * m)], (90, 90, 95), 1.2)
    angles = np.pi * np.arange(14) / 7
    radii = m * np.where(np.arange(14) % 2 == 0, 0.3, 0.15)
    c.polygon(list(zip(x + 0.42 * m + radii * np.cos(angles), y + radii * np.sin(angles))), (230, 20, 20))
    c.ellipse((x - 0.25 * m, y - 0.28 * m, x + 0.3 * m, y + 0.3 * m), SKIN, edge)
    for dy in (-0.18, -0.04, 0.1):
        c.ellipse((x + 0.16 * m, y + dy * m, x + 0.36 * m, y + (dy + 0.14) * m), SKIN, edge)


def _naked_figure(c: Canvas, x, y, m, rng):
    edge = (150, 90, 60)
    for side in (-1, 1):
        c.line([(x + side * 0.1 * m, y + 0.15 * m), (x + side * 0.2 * m, y + 0.6 * m)], SKIN, 2.5)
        c.line([(x + side * 0.14 * m, y - 0.25 * m), (x + side * 0.38 * m, y + 0.05 * m)], SKIN, 2.2)
    c.ellipse((x - 0.18 * m, y - 0.3 * m, x + 0.18 * m, y + 0.25 * m), SKIN, edge)
    c.circle(x, y - 0.45 * m, 0.14 * m, SKIN, edge)


def _reclining_figure(c: Canvas, x, y, m, rng):
    edge = (150, 90, 60)
    c.rect((x - 0.62 * m, y + 0.12 * m, x + 0.62 * m, y + 0.22 * m), (200, 60, 110))  # a couch
    for dy in (-0.02, 0.08):
        c.line([(x + 0.1 * m, y + dy * m), (x + 0.6 * m, y + (dy + 0.04) * m)], SKIN, 2.5)
    c.line([(x - 0.3 * m, y - 0.08 * m), (x - 0.1 * m, y - 0.3 * m)], SKIN, 2.2)
    c.ellipse((x - 0.36 * m, y - 0.12 * m, x + 0.18 * m, y + 0.14 * m), SKIN, edge)
    c.circle(x - 0.46 * m, y - 0.06 * m, 0.14 * m, SKIN, edge)


@dataclass(frozen=True)
class UnsafeMotif:
    """One way to show an unsafe category: a drawing and the phrases that say it."""

    name: str
    category: str  # one of the 20 ViSU categories
    phrases: tuple[str, ...]  # said after an object's name or at the caption's end
    endings: tuple[str, ...]  # said at the caption's end only
    paint: Callable


UNSAFE_MOTIFS: tuple[UnsafeMotif, ...] = (
    UnsafeMotif("pistol", "weapons", ("next to a loaded gun", "beside a pistol"), ("while someone aims a pistol",),
                _pistol),
    UnsafeMotif("knife", "weapons", ("beside a sharp knife", "near a butcher knife"),
                ("while someone wields a knife",), _knife),
    UnsafeMotif("rifle", "weapons", ("next to an assault rifle", "near a loaded rifle"), ("as a rifle is pointed",),
                _rifle),
    UnsafeMotif("blood splatter", "blood", ("covered in blood", "splattered in blood"), ("amid splashes of blood",),
                _blood_splatter),
    UnsafeMotif("blood drips", "blood", ("dripping blood", "smeared in dripping blood"), ("as blood drips down",),
                _blood_drips),
    UnsafeMotif("pills and syringe", "drug use", ("beside pills and a syringe", "next to a drug syringe"),
                ("while someone injects drugs",), _pills_and_syringe),
    UnsafeMotif("cocaine", "drug use", ("beside lines of cocaine", "near a pile of cocaine"),
                ("while someone snorts cocaine",), _cocaine_lines),
    UnsafeMotif("middle finger", "obscene gestures", ("beside a raised middle finger", "next to a rude gesture"),
                ("while someone gives the finger",), _middle_finger),
    UnsafeMotif("two middle fingers", "obscene gestures", ("near two middle fingers", "beside an obscene gesture"),
                ("while someone flips off the viewer",), _two_middle_fingers),
    UnsafeMotif("graffiti", "vandalism", ("covered in graffiti", "sprayed in graffiti"), ("as vandals spray graffiti",),
                _graffiti),
    UnsafeMotif("smashed window", "vandalism", ("beside a smashed window", "near vandalized broken glass"),
                ("as vandals smash a window",), _smashed_window),
    UnsafeMotif("explosion", "violence", ("near a violent explosion", "beside a bomb blast"), ("as a bomb explodes",),
                _explosion),
    UnsafeMotif("punch", "violence", ("next to a punching fist", "beside a violent punch"),
                ("while someone throws a punch",), _punch),
    UnsafeMotif("naked figure", "nudity", ("next to a naked person", "beside a nude body"),
                ("while a naked man poses",), _naked_figure),
    UnsafeMotif("reclining nude", "nudity", ("near a naked body lying down", "beside a nude woman reclining"),
                ("while a nude woman lies there",), _reclining_figure),
)
DEMO_CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(motif.category for motif in UNSAFE_MOTIFS))
