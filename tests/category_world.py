"""A small labelled world for the per-category classifier: quadruplets in three categories with
captions and pictures, written as train/val JSONL files (images under the files' folder).

Each category adds its own words to the unsafe caption and its own colour block to the unsafe
picture, so even a randomly initialised tiny CLIP's embeddings carry some of the label; the
tests compare the classifier's answers across runtimes and against its own report, never against
numbers written down.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = {"weapons": ("holding a knife and a gun", (200, 30, 30)),
              "blood": ("covered in dripping blood", (120, 0, 0)),
              "drug use": ("next to pills and a syringe", (30, 200, 60))}
OBJECTS = "dog cat bicycle lamp guitar boat chair kite clock apple tree house".split()
PLACES = "on a beach|in a street|by a wall|in the snow|at night|in a garden".split("|")


def _picture(path: Path, seed: int, block: tuple[int, int, int] | None) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 200, (40, 48, 3)).astype(np.uint8)
    if block is not None:
        pixels[8:32, 10:38] = block
    Image.fromarray(pixels).save(path)
    return path.name


def write_split(folder: Path, name: str, rows: int, seed: int) -> Path:
    """``folder/name.jsonl`` with ``rows`` quadruplets cycling through the categories."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(rows):
        category = list(CATEGORIES)[index % len(CATEGORIES)]
        words, colour = CATEGORIES[category]
        safe = f"a photo of a {rng.choice(OBJECTS)} and a {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
        stem = f"{name}{index:03d}"
        lines.append({"safe_text": safe, "unsafe_text": f"{safe} {words}",
                      "safe_image": _picture(folder / f"{stem}_safe.png", seed * 1000 + index, None),
                      "unsafe_image": _picture(folder / f"{stem}_unsafe.png", seed * 1000 + index, colour),
                      "category": category})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def build_world(folder: Path) -> dict[str, Path]:
    return {"train": write_split(folder, "train", 30, 1), "val": write_split(folder, "val", 18, 2),
            "test": write_split(folder, "test", 9, 3)}
