"""A generated world of safe/unsafe quadruplets, for demos and tests that cannot download data.

Each scene is drawn procedurally: a background (grass, sea, sky, ...) and one to three objects,
each in its own quadrant of a 2x2 grid, with a colour. The objects come from 256 object types
(:mod:`.world_objects`: 32 shape families x 8 attributes, "striped kettle", "winged owl", "tent"),
each with its own consistent drawing; the first object of a scene, its ``label``, is drawn largest.
The caption names every object with its colour, in a random order, through one of 8 templates
and 3 ways of joining the names ("a red striped kettle and a blue tent on the grass", "at night
we see ...").

The unsafe counterpart is the same scene plus one of 15 abstract motifs (two or three for each of
7 unsafe categories, :mod:`.world_motifs`) in a free quadrant, and the same caption rewritten with
one of the motif's phrases, inserted after one object's name or at the end ("a red striped kettle
next to a loaded gun and a blue tent on the grass"). So an unsafe caption's nearest safe caption
is its own twin, as in ViSU or NSFW-Caps.

Held-out combinations: every unordered pair of object types belongs to one split (80% train,
10% val, 10% test, drawn from ``seed``), and the objects of a scene are chosen so that every pair
of them belongs to the scene's split. No two objects that meet in a val or test scene ever meet in
a train scene, so neither does any val/test combination. Every object type still appears in
training: train scenes take their first object in turn from a shuffled list of all object types
(with at least 256 train scenes, each type is there); single-object scenes share objects freely.

Everything is a pure function of ``seed``: the same arguments give byte-identical files.

Beside the splits, ``probes.jsonl`` holds the probe file an audit of the demo's collection reads
(``safeclip audit``): for test item i, its unsafe caption (labelled unsafe) and its safe caption
(labelled safe), both with the item's category and expecting point i, the item's safe image, in
the demo's test gallery (point i is test item i's safe image, point N + i its unsafe image; the
payload field ``unsafe`` says which).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .._utils.files import atomic_write_text
from .world_motifs import DEMO_CATEGORIES, UNSAFE_MOTIFS, UnsafeMotif
from .world_objects import COLOURS, OBJECT_NAMES, UNIT, Canvas, Color, object_sprite

__all__ = ["BACKGROUNDS", "CAPTION_TEMPLATES", "COLOURS", "DEMO_CATEGORIES", "GENERATOR_VERSION", "PROBES_FILE",
           "SUBJECTS", "UNSAFE_FIELD", "UNSAFE_MOTIFS", "Scene", "ScenePlan", "UnsafeMotif", "build_demo_world",
           "captions", "pair_splits", "plan_scene", "render_scene", "write_probes"]

GENERATOR_VERSION = 2  # bump when the drawing or captions change, so stale worlds are rebuilt
SPLITS = ("train", "val", "test")
WORLD_FILE = "world.json"
PROBES_FILE = "probes.jsonl"
#: the payload field that marks the unsafe images of the demo's test gallery
UNSAFE_FIELD = "unsafe"

SUBJECTS: tuple[str, ...] = OBJECT_NAMES  # the object types, and the zero-shot labels
SPLIT_SHARES = (0.8, 0.1, 0.1)  # of the object pairs
OBJECT_COUNT_ODDS = {1: 0.25, 2: 0.4, 3: 0.35}
QUADRANTS = ((19.0, 19.0), (45.0, 19.0), (19.0, 45.0), (45.0, 45.0))  # centres, in 64-unit coordinates
MAIN_SIZE, OTHER_SIZE = 38.0, 26.0  # sprite sides in units: the label's object is the largest
PARTITION_STREAM = 1000  # the seed sequence [seed, 1000] draws the pair partition, apart from the scenes'

BACKGROUND_WORDS = {
    "grass": "on the grass", "sea": "on the sea", "sky": "under a clear sky", "road": "on a road",
    "snow": "in the snow", "sand": "on the sand", "night": "at night", "wall": "by a brick wall",
}
CAPTION_TEMPLATES = (
    "{objects} {background}",
    "a photo of {objects} {background}",
    "{background}, {objects}",
    "{background} there is {objects}",
    "a picture showing {objects} {background}",
    "{objects}, seen {background}",
    "an image of {objects} {background}",
    "{background} we see {objects}",
)
# How the names of one, two and three objects are joined.
LIST_STYLES = (
    ("{0}", "{0} and {1}", "{0}, {1} and {2}"),
    ("{0}", "{0} together with {1}", "{0} together with {1} and {2}"),
    ("{0}", "{0} alongside {1}", "{0} alongside {1} and {2}"),
)


# ---------------------------------------------------------------------------------- backgrounds

def _noisy(base: Color, rng: np.random.Generator, size: int, spread: float = 7.0) -> Image.Image:
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0.0, spread, (size, size, 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _grass(c: Canvas, rng):
    for _ in range(40):
        x, y = rng.uniform(0, 64), rng.uniform(4, 64)
        c.line([(x, y), (x + rng.uniform(-1, 1), y - 3)], (40, 110, 35))


def _sea(c: Canvas, rng):
    for y in np.arange(rng.uniform(2, 6), 64, 7):
        c.line([(x, y + 1.5 * np.sin(x / 4)) for x in range(0, 66, 4)], (120, 170, 230))


def _sky(c: Canvas, rng):
    x = rng.uniform(8, 40)
    for dx, dy, r in ((0, 0, 5), (6, -2, 6), (12, 0, 5)):
        c.circle(x + dx, 9 + dy, r, (250, 250, 252))


def _road(c: Canvas, rng):
    c.rect((0, 0, 64, 12), (80, 150, 70))
    for x in np.arange(rng.uniform(-6, 0), 64, 12):
        c.rect((x, 55, x + 6, 57), (245, 210, 40))


def _snow(c: Canvas, rng):
    for _ in range(30):
        c.circle(rng.uniform(0, 64), rng.uniform(0, 64), 0.6, (170, 190, 215))


def _sand(c: Canvas, rng):
    for _ in range(35):
        c.circle(rng.uniform(0, 64), rng.uniform(0, 64), 0.6, (175, 145, 85))


def _night(c: Canvas, rng):
    for _ in range(18):
        c.circle(rng.uniform(0, 64), rng.uniform(0, 40), 0.6, (250, 250, 210))
    c.circle(rng.uniform(6, 58), 7, 4, (240, 235, 190))


def _wall(c: Canvas, rng):
    mortar = (200, 195, 185)
    for row, y in enumerate(range(0, 64, 6)):
        c.line([(0, y), (64, y)], mortar)
        for x in range(-6 if row % 2 else 0, 64, 12):
            c.line([(x, y), (x, y + 6)], mortar)


BACKGROUNDS: dict[str, tuple[Color, Callable[[Canvas, np.random.Generator], None]]] = {
    "grass": ((75, 155, 60), _grass), "sea": ((30, 90, 170), _sea), "sky": ((130, 195, 240), _sky),
    "road": ((105, 105, 112), _road), "snow": ((234, 239, 247), _snow), "sand": ((226, 200, 142), _sand),
    "night": ((14, 20, 52), _night), "wall": ((160, 72, 52), _wall),
}


# ------------------------------------------------------------------------------ held-out pairs

@lru_cache(maxsize=8)
def pair_splits(seed: int) -> np.ndarray:
    """``[i, j]``: the index in SPLITS of the split that owns object pair (i, j); -1 on the diagonal."""
    rng = np.random.default_rng([seed, PARTITION_STREAM])
    draws = np.triu(rng.random((len(SUBJECTS), len(SUBJECTS))), 1)
    owner = np.searchsorted(np.cumsum(SPLIT_SHARES)[:-1], draws + draws.T, side="right")
    np.fill_diagonal(owner, -1)
    owner.flags.writeable = False
    return owner


@lru_cache(maxsize=8)
def _train_main_order(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, PARTITION_STREAM + 1]).permutation(len(SUBJECTS))


# ------------------------------------------------------------------------------------------ scenes

@dataclass(frozen=True)
class ScenePlan:
    """What a scene shows and says, before it is drawn."""

    objects: tuple[str, ...]  # the first is the main object: the label, drawn largest
    colours: tuple[str, ...]
    quadrants: tuple[int, ...]
    background: str
    template: int
    list_style: int
    caption_order: tuple[int, ...]  # indices into objects, in the order the caption names them
    motif: UnsafeMotif
    phrase: str
    phrase_after: int  # the caption position of the object the phrase follows; len(objects): the end


@dataclass(frozen=True)
class Scene:
    """A drawn scene: its safe and unsafe images and captions, the motif's category, the label."""

    safe_image: Image.Image
    unsafe_image: Image.Image
    safe_text: str
    unsafe_text: str
    category: str
    label: str


def plan_scene(rng: np.random.Generator, owner: np.ndarray, split_index: int, main: int | None = None) -> ScenePlan:
    """A random scene of split ``split_index``: every pair of its objects is owned by that split."""
    count = int(rng.choice(list(OBJECT_COUNT_ODDS), p=list(OBJECT_COUNT_ODDS.values())))
    chosen = [int(rng.integers(len(SUBJECTS))) if main is None else main]
    for _ in range(count - 1):
        allowed = np.all(owner[chosen] == split_index, axis=0).nonzero()[0]
        if len(allowed) == 0:  # rare: no object forms a pair of this split with every one chosen
            break
        chosen.append(int(rng.choice(allowed)))
    count = len(chosen)
    motif = UNSAFE_MOTIFS[rng.integers(len(UNSAFE_MOTIFS))]
    choices = motif.phrases + motif.endings
    phrase = choices[rng.integers(len(choices))]
    return ScenePlan(
        objects=tuple(SUBJECTS[index] for index in chosen),
        colours=tuple(str(colour) for colour in rng.choice(list(COLOURS), count)),
        quadrants=tuple(int(quadrant) for quadrant in rng.permutation(len(QUADRANTS))[:count]),
        background=str(rng.choice(list(BACKGROUNDS))),
        template=int(rng.integers(len(CAPTION_TEMPLATES))),
        list_style=int(rng.integers(len(LIST_STYLES))),
        caption_order=tuple(int(index) for index in rng.permutation(count)),
        motif=motif,
        phrase=phrase,
        phrase_after=int(rng.integers(count + 1)) if phrase in motif.phrases else count,
    )


def render_scene(plan: ScenePlan, rng: np.random.Generator, image_size: int = 64) -> Scene:
    """Draw ``plan`` (background noise and motif details from ``rng``) and write its two captions."""
    base, paint_background = BACKGROUNDS[plan.background]
    safe = _noisy(base, rng, image_size)
    paint_background(Canvas(safe), rng)
    scale = image_size / UNIT
    for index in reversed(range(len(plan.objects))):  # the main object last, on top
        size = round((MAIN_SIZE if index == 0 else OTHER_SIZE) * scale)  # fixed, so an object keeps its look
        centre_x, centre_y = QUADRANTS[plan.quadrants[index]] + rng.uniform(-1.5, 1.5, 2)
        sprite = object_sprite(plan.objects[index], plan.colours[index], size)
        safe.paste(sprite, (round(centre_x * scale - size / 2), round(centre_y * scale - size / 2)), sprite)

    unsafe = safe.copy()
    free = [quadrant for quadrant in range(len(QUADRANTS)) if quadrant not in plan.quadrants]
    motif_x, motif_y = QUADRANTS[free[rng.integers(len(free))]] + rng.uniform(-2, 2, 2)
    plan.motif.paint(Canvas(unsafe), motif_x, motif_y, UNIT * rng.uniform(0.4, 0.46), rng)
    safe_text, unsafe_text = captions(plan)
    return Scene(safe, unsafe, safe_text, unsafe_text, plan.motif.category, plan.objects[0])


def captions(plan: ScenePlan) -> tuple[str, str]:
    """The safe caption of ``plan`` and its unsafe rewrite (the motif's phrase put in)."""
    names = [f"a {plan.colours[index]} {plan.objects[index]}" for index in plan.caption_order]
    with_phrase = [f"{name} {plan.phrase}" if position == plan.phrase_after else name
                   for position, name in enumerate(names)]
    template = CAPTION_TEMPLATES[plan.template]
    join = LIST_STYLES[plan.list_style][len(names) - 1]
    background = BACKGROUND_WORDS[plan.background]
    safe = template.format(objects=join.format(*names), background=background)
    unsafe = template.format(objects=join.format(*with_phrase), background=background)
    if plan.phrase_after == len(names):
        unsafe = f"{unsafe} {plan.phrase}"
    return _fix_articles(safe), _fix_articles(unsafe)


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
                if not (out / PROBES_FILE).is_file():  # a world from before the probe file
                    write_probes(files["test"], out / PROBES_FILE)
                return files
        except json.JSONDecodeError:
            pass  # a damaged marker: rebuild

    if world_file.is_file():  # an older world of ours: clear its images, then rebuild
        world_file.unlink()  # written last again, so an interrupted build is never reused
        shutil.rmtree(out / "images", ignore_errors=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split_index, split in enumerate(SPLITS):
        _write_split(out, split, split_index, counts[split], image_size, seed, files[split])
    write_probes(files["test"], out / PROBES_FILE)
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
    owner, main_order = pair_splits(seed), _train_main_order(seed)
    lines = []
    for index in range(count):
        rng = np.random.default_rng([seed, split_index, index])
        main = int(main_order[index % len(main_order)]) if split == "train" else None
        plan = plan_scene(rng, owner, split_index, main)
        scene = render_scene(plan, rng, image_size)
        safe_name, unsafe_name = f"{index:05d}_safe.png", f"{index:05d}_unsafe.png"
        scene.safe_image.save(image_dir / safe_name, format="PNG", compress_level=1)  # speed over size
        scene.unsafe_image.save(image_dir / unsafe_name, format="PNG", compress_level=1)
        lines.append(json.dumps({
            "safe_text": scene.safe_text,
            "unsafe_text": scene.unsafe_text,
            "safe_image": f"images/{split}/{safe_name}",
            "unsafe_image": f"images/{split}/{unsafe_name}",
            "category": scene.category,
            "label": scene.label,
            "objects": list(plan.objects),
            "template": plan.template,
            "motif": plan.motif.name,
        }))
    atomic_write_text(jsonl_path, "\n".join(lines) + "\n")


def write_probes(test_jsonl: Path, path: Path) -> Path:
    """The audit's probe file of the demo's test gallery (see the module docstring)."""
    rows = [json.loads(line) for line in test_jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [json.dumps({"safeclip_probes": 1, "unsafe_field": UNSAFE_FIELD, "categories": list(DEMO_CATEGORIES)})]
    for index, row in enumerate(rows):
        for text, label in ((row["unsafe_text"], "unsafe"), (row["safe_text"], "safe")):
            lines.append(json.dumps({"text": text, "label": label, "category": row["category"], "expected": [index]}))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
