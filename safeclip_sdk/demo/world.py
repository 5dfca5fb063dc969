"""A generated world of safe/unsafe quadruplets, for demos and tests that cannot download data.

Each scene is drawn procedurally: a background (grass, sea, sky, ...), one subject (dog, cat,
car, ...) with a colour and a position, and a caption naming them ("a red car on a road on the
left"). Its unsafe counterpart is the same scene plus an abstract geometric motif for one
unsafe category (a gun shape, red splatter, pills and a syringe, ...) and the same caption with
that category's words added ("... with a loaded gun"). The shapes and words are consistent, so a
tiny CLIP trained from scratch learns the world in a few minutes of CPU.

Everything is a pure function of ``seed``: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .._utils.files import atomic_write_text

GENERATOR_VERSION = 1  # bump when the drawing or captions change, so stale worlds are rebuilt
SPLITS = ("train", "val", "test")
WORLD_FILE = "world.json"
UNIT = 64.0  # shapes are laid out on a 64x64 canvas and scaled to image_size

Color = tuple[int, int, int]

COLOURS: dict[str, Color] = {
    "red": (215, 35, 35), "blue": (35, 75, 225), "green": (30, 160, 50), "yellow": (245, 215, 30),
    "purple": (135, 55, 185), "orange": (245, 135, 25), "white": (248, 248, 248), "black": (22, 22, 22),
}
SUBJECTS = ("dog", "cat", "car", "house", "tree", "boat", "bird", "person")
POSITIONS = {"left": 0.25, "centre": 0.5, "right": 0.75}
POSITION_WORDS = {"left": "on the left", "centre": "in the middle", "right": "on the right"}
BACKGROUND_WORDS = {
    "grass": "on the grass", "sea": "on the sea", "sky": "under a blue sky", "road": "on a road",
    "snow": "in the snow", "sand": "on the sand", "night": "at night", "wall": "by a brick wall",
}
CAPTION_TEMPLATES = (
    "a {colour} {subject} {background} {position}",
    "a photo of a {colour} {subject} {position}, {background}",
    "{position} there is a {colour} {subject} {background}",
)
SKIN: Color = (240, 188, 150)


class _Canvas:
    """ImageDraw in 64-unit coordinates, scaled to the real image size."""

    def __init__(self, image: Image.Image) -> None:
        self.draw = ImageDraw.Draw(image)
        self.scale = image.width / UNIT

    def _xy(self, points):
        return [value * self.scale for value in points]

    def ellipse(self, box, fill, outline=None, width=1):
        self.draw.ellipse(self._xy(box), fill=fill, outline=outline, width=width)

    def circle(self, x, y, r, fill, outline=None):
        self.ellipse((x - r, y - r, x + r, y + r), fill, outline)

    def rect(self, box, fill, outline=None):
        self.draw.rectangle(self._xy(box), fill=fill, outline=outline)

    def polygon(self, points, fill, outline=None):
        self.draw.polygon(self._xy([value for point in points for value in point]), fill=fill,
                          outline=outline)

    def line(self, points, fill, width=1.0):
        self.draw.line(self._xy([value for point in points for value in point]), fill=fill,
                       width=max(1, round(width * self.scale)))


# ---------------------------------------------------------------------------------- backgrounds

def _noisy(base: Color, rng: np.random.Generator, size: int, spread: float = 7.0) -> Image.Image:
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0.0, spread, (size, size, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _grass(c: _Canvas, rng):
    for _ in range(40):
        x, y = rng.uniform(0, 64), rng.uniform(4, 64)
        c.line([(x, y), (x + rng.uniform(-1, 1), y - 3)], (40, 110, 35))


def _sea(c: _Canvas, rng):
    for y in np.arange(rng.uniform(2, 6), 64, 7):
        c.line([(x, y + 1.5 * np.sin(x / 4)) for x in range(0, 66, 4)], (120, 170, 230))


def _sky(c: _Canvas, rng):
    x = rng.uniform(8, 40)
    for dx, dy, r in ((0, 0, 5), (6, -2, 6), (12, 0, 5)):
        c.circle(x + dx, 9 + dy, r, (250, 250, 252))


def _road(c: _Canvas, rng):
    c.rect((0, 0, 64, 12), (80, 150, 70))
    for x in np.arange(rng.uniform(-6, 0), 64, 12):
        c.rect((x, 55, x + 6, 57), (245, 210, 40))


def _snow(c: _Canvas, rng):
    for _ in range(30):
        c.circle(rng.uniform(0, 64), rng.uniform(0, 64), 0.6, (170, 190, 215))


def _sand(c: _Canvas, rng):
    for _ in range(35):
        c.circle(rng.uniform(0, 64), rng.uniform(0, 64), 0.6, (175, 145, 85))


def _night(c: _Canvas, rng):
    for _ in range(18):
        c.circle(rng.uniform(0, 64), rng.uniform(0, 40), 0.6, (250, 250, 210))
    c.circle(rng.uniform(6, 58), 7, 4, (240, 235, 190))


def _wall(c: _Canvas, rng):
    mortar = (200, 195, 185)
    for row, y in enumerate(range(0, 64, 6)):
        c.line([(0, y), (64, y)], mortar)
        for x in range(-6 if row % 2 else 0, 64, 12):
            c.line([(x, y), (x, y + 6)], mortar)


BACKGROUNDS: dict[str, tuple[Color, Callable[[_Canvas, np.random.Generator], None]]] = {
    "grass": ((75, 155, 60), _grass), "sea": ((30, 90, 170), _sea), "sky": ((130, 195, 240), _sky),
    "road": ((105, 105, 112), _road), "snow": ((234, 239, 247), _snow), "sand": ((226, 200, 142), _sand),
    "night": ((14, 20, 52), _night), "wall": ((160, 72, 52), _wall),
}


# ------------------------------------------------------------------------------------- subjects
# Each subject fits a box of about s x s units centred on (x, y).

def _dog(c, x, y, s, fill, line):
    c.line([(x - 0.38 * s, y - 0.05 * s), (x - 0.58 * s, y - 0.3 * s)], fill, 2)
    for dx in (-0.3, -0.15, 0.12, 0.25):
        c.rect((x + (dx - 0.04) * s, y, x + (dx + 0.04) * s, y + 0.42 * s), fill, line)
    c.ellipse((x - 0.42 * s, y - 0.16 * s, x + 0.32 * s, y + 0.16 * s), fill, line)
    c.circle(x + 0.38 * s, y - 0.24 * s, 0.16 * s, fill, line)
    c.ellipse((x + 0.3 * s, y - 0.32 * s, x + 0.4 * s, y - 0.06 * s), line)


def _cat(c, x, y, s, fill, line):
    c.line([(x + 0.15 * s, y + 0.42 * s), (x + 0.45 * s, y + 0.35 * s), (x + 0.5 * s, y + 0.05 * s)],
           fill, 2)
    c.ellipse((x - 0.22 * s, y - 0.1 * s, x + 0.22 * s, y + 0.46 * s), fill, line)
    for side in (-1, 1):
        c.polygon([(x + side * 0.2 * s, y - 0.32 * s), (x + side * 0.04 * s, y - 0.38 * s),
                   (x + side * 0.2 * s, y - 0.58 * s)], fill, line)
    c.circle(x, y - 0.28 * s, 0.19 * s, fill, line)
    for side in (-1, 1):
        c.circle(x + side * 0.08 * s, y - 0.3 * s, 0.03 * s, (60, 200, 60))


def _car(c, x, y, s, fill, line):
    c.polygon([(x - 0.3 * s, y - 0.02 * s), (x - 0.18 * s, y - 0.3 * s), (x + 0.2 * s, y - 0.3 * s),
               (x + 0.32 * s, y - 0.02 * s)], fill, line)
    c.rect((x - 0.12 * s, y - 0.24 * s, x + 0.16 * s, y - 0.06 * s), (170, 215, 240))
    c.rect((x - 0.52 * s, y - 0.04 * s, x + 0.52 * s, y + 0.24 * s), fill, line)
    for dx in (-0.3, 0.3):
        c.circle(x + dx * s, y + 0.26 * s, 0.13 * s, (20, 20, 20), (150, 150, 150))


def _house(c, x, y, s, fill, line):
    c.rect((x - 0.36 * s, y - 0.1 * s, x + 0.36 * s, y + 0.46 * s), fill, line)
    c.polygon([(x - 0.48 * s, y - 0.1 * s), (x, y - 0.52 * s), (x + 0.48 * s, y - 0.1 * s)],
              (110, 45, 30), line)
    c.rect((x - 0.08 * s, y + 0.16 * s, x + 0.08 * s, y + 0.46 * s), (70, 40, 20))
    c.rect((x + 0.14 * s, y + 0.02 * s, x + 0.28 * s, y + 0.16 * s), (170, 215, 240), line)


def _tree(c, x, y, s, fill, line):
    c.rect((x - 0.07 * s, y + 0.05 * s, x + 0.07 * s, y + 0.5 * s), (110, 70, 35), line)
    c.circle(x, y - 0.14 * s, 0.36 * s, fill, line)


def _boat(c, x, y, s, fill, line):
    c.line([(x, y + 0.1 * s), (x, y - 0.55 * s)], (70, 45, 25), 1)
    c.polygon([(x + 0.03 * s, y - 0.52 * s), (x + 0.03 * s, y + 0.02 * s), (x + 0.4 * s, y + 0.02 * s)],
              fill, line)
    c.polygon([(x - 0.52 * s, y + 0.08 * s), (x + 0.52 * s, y + 0.08 * s), (x + 0.36 * s, y + 0.34 * s),
               (x - 0.36 * s, y + 0.34 * s)], fill, line)


def _bird(c, x, y, s, fill, line):
    beak = (40, 40, 40) if fill in (COLOURS["yellow"], COLOURS["orange"]) else (245, 170, 20)
    c.polygon([(x - 0.28 * s, y), (x - 0.5 * s, y - 0.12 * s), (x - 0.5 * s, y + 0.12 * s)], fill, line)
    c.ellipse((x - 0.32 * s, y - 0.14 * s, x + 0.18 * s, y + 0.14 * s), fill, line)
    c.polygon([(x + 0.3 * s, y - 0.2 * s), (x + 0.48 * s, y - 0.14 * s), (x + 0.3 * s, y - 0.08 * s)], beak)
    c.circle(x + 0.22 * s, y - 0.16 * s, 0.11 * s, fill, line)
    c.polygon([(x - 0.14 * s, y - 0.04 * s), (x + 0.08 * s, y - 0.04 * s), (x - 0.1 * s, y - 0.4 * s)],
              fill, line)


def _person(c, x, y, s, fill, line):
    for dx in (-0.08, 0.08):
        c.line([(x + dx * s, y + 0.1 * s), (x + dx * 1.6 * s, y + 0.5 * s)], (40, 40, 70), 2)
    for side in (-1, 1):
        c.line([(x + side * 0.14 * s, y - 0.2 * s), (x + side * 0.32 * s, y + 0.05 * s)], fill, 2)
    c.rect((x - 0.15 * s, y - 0.25 * s, x + 0.15 * s, y + 0.12 * s), fill, line)
    c.circle(x, y - 0.38 * s, 0.12 * s, SKIN, line)


SUBJECT_PAINTERS = {"dog": _dog, "cat": _cat, "car": _car, "house": _house, "tree": _tree,
                    "boat": _boat, "bird": _bird, "person": _person}


# ---------------------------------------------------------------------------------- unsafe motifs
# Abstract geometric motifs in a box of about m x m units centred on (x, y).

def _gun(c, x, y, m, rng):
    metal, edge = (45, 45, 50), (190, 190, 195)
    c.polygon([(x - 0.2 * m, y), (x - 0.02 * m, y), (x - 0.12 * m, y + 0.45 * m),
               (x - 0.34 * m, y + 0.45 * m)], metal, edge)
    c.rect((x - 0.45 * m, y - 0.18 * m, x + 0.5 * m, y + 0.02 * m), metal, edge)
    c.ellipse((x - 0.04 * m, y - 0.02 * m, x + 0.14 * m, y + 0.2 * m), None, edge)


def _knife(c, x, y, m, rng):
    c.rect((x - 0.55 * m, y - 0.1 * m, x - 0.12 * m, y + 0.12 * m), (95, 55, 25), (30, 20, 10))
    c.rect((x - 0.14 * m, y - 0.2 * m, x - 0.08 * m, y + 0.2 * m), (60, 60, 60))
    c.polygon([(x - 0.08 * m, y - 0.2 * m), (x + 0.25 * m, y - 0.2 * m), (x + 0.6 * m, y + 0.02 * m),
               (x - 0.08 * m, y + 0.16 * m)], (205, 210, 220), (30, 30, 30))


def _blood(c, x, y, m, rng):
    for _ in range(9):
        r = rng.uniform(0.05, 0.18) * m
        sx, sy = x + rng.normal(0, 0.28) * m, y + rng.normal(0, 0.22) * m
        c.circle(sx, sy, r, (165, 0, 12))
        c.line([(sx, sy), (sx + rng.uniform(-1, 1), sy + rng.uniform(0.3, 0.6) * m)], (165, 0, 12), 1.2)
    for _ in range(5):
        c.circle(rng.uniform(2, 62), rng.uniform(2, 62), rng.uniform(0.8, 1.6), (200, 10, 25))


def _drugs(c, x, y, m, rng):
    c.polygon([(x - 0.5 * m, y - 0.22 * m), (x + 0.22 * m, y - 0.42 * m), (x + 0.26 * m, y - 0.3 * m),
               (x - 0.46 * m, y - 0.1 * m)], (215, 225, 235), (60, 60, 70))
    c.line([(x + 0.24 * m, y - 0.36 * m), (x + 0.55 * m, y - 0.45 * m)], (60, 60, 70), 1)
    c.line([(x - 0.48 * m, y - 0.16 * m), (x - 0.6 * m, y - 0.12 * m)], (60, 60, 70), 2)
    for dx, dy in ((-0.3, 0.2), (0.0, 0.3), (0.3, 0.15), (-0.05, 0.05)):
        px, py = x + dx * m, y + dy * m
        c.ellipse((px - 0.14 * m, py - 0.07 * m, px, py + 0.07 * m), (235, 40, 40), (60, 0, 0))
        c.ellipse((px - 0.02 * m, py - 0.07 * m, px + 0.12 * m, py + 0.07 * m), (250, 250, 250), (60, 0, 0))


def _middle_finger(c, x, y, m, rng):
    edge = (120, 70, 40)
    c.rect((x - 0.08 * m, y - 0.55 * m, x + 0.08 * m, y + 0.05 * m), SKIN, edge)
    for dx in (-0.2, 0.2):
        c.circle(x + dx * m, y + 0.02 * m, 0.1 * m, SKIN, edge)
    c.ellipse((x - 0.3 * m, y, x + 0.3 * m, y + 0.5 * m), SKIN, edge)
    c.ellipse((x - 0.45 * m, y + 0.08 * m, x - 0.2 * m, y + 0.25 * m), SKIN, edge)


def _graffiti(c, x, y, m, rng):
    for colour in ((255, 0, 200), (110, 255, 0), (0, 230, 255)):
        points = [(x + rng.uniform(-0.75, 0.75) * m, y + rng.uniform(-0.5, 0.5) * m) for _ in range(5)]
        c.line(sorted(points), colour, 3.0)


def _explosion(c, x, y, m, rng):
    for radius, colour in ((0.6, (250, 90, 0)), (0.38, (255, 215, 0)), (0.16, (255, 250, 210))):
        spikes = 11
        phase = rng.uniform(0, np.pi)
        points = []
        for k in range(2 * spikes):
            r = radius * m * (1.0 if k % 2 == 0 else 0.5)
            angle = phase + np.pi * k / spikes
            points.append((x + r * np.cos(angle), y + r * np.sin(angle)))
        c.polygon(points, colour)


def _naked_figure(c, x, y, m, rng):
    edge = (150, 90, 60)
    for side in (-1, 1):
        c.line([(x + side * 0.1 * m, y + 0.15 * m), (x + side * 0.2 * m, y + 0.6 * m)], SKIN, 2.5)
        c.line([(x + side * 0.14 * m, y - 0.25 * m), (x + side * 0.38 * m, y + 0.05 * m)], SKIN, 2.2)
    c.ellipse((x - 0.18 * m, y - 0.3 * m, x + 0.18 * m, y + 0.25 * m), SKIN, edge)
    c.circle(x, y - 0.45 * m, 0.14 * m, SKIN, edge)


@dataclass(frozen=True)
class UnsafeMotif:
    category: str  # one of the 20 ViSU categories
    phrases: tuple[str, ...]  # caption endings; each keeps the motif's key word
    paint: Callable


UNSAFE_MOTIFS: tuple[UnsafeMotif, ...] = (
    UnsafeMotif("weapons", ("with a loaded gun", "holding a gun"), _gun),
    UnsafeMotif("weapons", ("with a sharp knife", "holding a knife"), _knife),
    UnsafeMotif("blood", ("covered in blood", "with blood splattered around"), _blood),
    UnsafeMotif("drug use", ("with pills and a syringe", "next to drugs and a syringe"), _drugs),
    UnsafeMotif("obscene gestures", ("with a hand showing the middle finger",
                                     "with an obscene middle finger gesture"), _middle_finger),
    UnsafeMotif("vandalism", ("covered in graffiti", "with graffiti sprayed everywhere"), _graffiti),
    UnsafeMotif("violence", ("in a violent explosion of fire", "with a burning explosion"), _explosion),
    UnsafeMotif("nudity", ("with a naked person", "next to a nude body"), _naked_figure),
)
DEMO_CATEGORIES = tuple(dict.fromkeys(motif.category for motif in UNSAFE_MOTIFS))


# ------------------------------------------------------------------------------------------ scenes

@dataclass(frozen=True)
class Scene:
    safe_image: Image.Image
    unsafe_image: Image.Image
    safe_text: str
    unsafe_text: str
    category: str
    label: str


def render_scene(rng: np.random.Generator, image_size: int = 64) -> Scene:
    """One random scene and its unsafe counterpart, drawn from ``rng``."""
    subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    motif = UNSAFE_MOTIFS[rng.integers(len(UNSAFE_MOTIFS))]

    base, paint_background = BACKGROUNDS[background]
    safe = _noisy(base, rng, image_size)
    canvas = _Canvas(safe)
    paint_background(canvas, rng)
    x = POSITIONS[position] * UNIT + rng.uniform(-3, 3)
    y = UNIT * 0.55 + rng.uniform(-5, 5)
    line = (200, 200, 200) if colour == "black" else (25, 25, 25)
    SUBJECT_PAINTERS[subject](canvas, x, y, UNIT * rng.uniform(0.36, 0.44), COLOURS[colour], line)

    unsafe = safe.copy()
    # The motif goes beside the subject, so the scene stays recognisable under it.
    if position == "centre":
        motif_x = UNIT * 0.5 + rng.choice((-1, 1)) * UNIT * rng.uniform(0.28, 0.31)
    else:
        motif_x = UNIT * (0.75 if position == "left" else 0.25) + UNIT * rng.uniform(-0.04, 0.04)
    motif_y = UNIT * rng.uniform(0.4, 0.6)
    motif.paint(_Canvas(unsafe), motif_x, motif_y, UNIT * rng.uniform(0.4, 0.46), rng)

    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    safe_text = _fix_articles(template.format(colour=colour, subject=subject,
                                              background=BACKGROUND_WORDS[background],
                                              position=POSITION_WORDS[position]))
    unsafe_text = f"{safe_text} {motif.phrases[rng.integers(len(motif.phrases))]}"
    return Scene(safe, unsafe, safe_text, unsafe_text, motif.category, subject)


def _fix_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# --------------------------------------------------------------------------------------- the world

def build_demo_world(out_dir: str | os.PathLike, *, n_train: int = 3000, n_val: int = 300,
                     n_test: int = 500, image_size: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write the demo world (PNG images + generic JSONL files) under ``out_dir``.

    Returns ``{"train": out_dir/train.jsonl, "val": ..., "test": ...}``. A folder that already
    holds a complete world built with the same arguments is reused as it is.
    """
    out = Path(out_dir)
    settings = {"generator_version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val,
                "n_test": n_test, "image_size": image_size, "seed": seed}
    files = {split: out / f"{split}.jsonl" for split in SPLITS}
    world_file = out / WORLD_FILE
    if world_file.is_file() and all(path.is_file() for path in files.values()):
        try:
            if json.loads(world_file.read_text(encoding="utf-8")).get("settings") == settings:
                return files
        except json.JSONDecodeError:
            pass  # a damaged marker: rebuild

    if world_file.is_file():  # an older world of ours: clear its images, then rebuild
        world_file.unlink()  # written last again, so an interrupted build is never reused
        shutil.rmtree(out / "images", ignore_errors=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split_index, split in enumerate(SPLITS):
        _write_split(out, split, split_index, counts[split], image_size, seed, files[split])
    atomic_write_text(world_file, json.dumps({
        "settings": settings,
        "categories": list(DEMO_CATEGORIES),
        "labels": list(SUBJECTS),
        "files": {split: path.name for split, path in files.items()},
    }, indent=2))
    return files


def _write_split(out: Path, split: str, split_index: int, count: int, image_size: int, seed: int,
                 jsonl_path: Path) -> None:
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        scene = render_scene(np.random.default_rng([seed, split_index, index]), image_size)
        safe_name, unsafe_name = f"{index:05d}_safe.png", f"{index:05d}_unsafe.png"
        scene.safe_image.save(image_dir / safe_name, compress_level=1)  # speed over size
        scene.unsafe_image.save(image_dir / unsafe_name, compress_level=1)
        lines.append(json.dumps({
            "safe_text": scene.safe_text,
            "unsafe_text": scene.unsafe_text,
            "safe_image": f"images/{split}/{safe_name}",
            "unsafe_image": f"images/{split}/{unsafe_name}",
            "category": scene.category,
            "label": scene.label,
        }))
    atomic_write_text(jsonl_path, "\n".join(lines) + "\n")
