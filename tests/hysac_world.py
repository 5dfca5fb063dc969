"""A tiny HySAC world for inference tests: a `safeclip-tiny` model folder in a Lorentz space.

The model is randomly initialised, so nothing in it knows what is unsafe. The world is built to
match it instead: of the generated captions and pictures, the half lying further from the origin
is called unsafe, so the calibrated threshold separates the classes and every figure a test
checks is computed from the real model, not written down.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.metrics.calibration import calibrate
from safeclip_sdk.methods.hysac.traversal import class_distance_stats
from safeclip_sdk.model.folder import load_model, save_model_dir

CURVATURE = 1.3
TEXT_SCALE = 0.21
IMAGE_SCALE = 0.2
SPACE = {"kind": "lorentz", "dim": 64, "curvature": CURVATURE, "text_scale": TEXT_SCALE, "image_scale": IMAGE_SCALE}
NUM_QUADRUPLETS = 8
_WORDS = "dog cat street beach red blue small large person car snow night grass old young river".split()


def write_picture(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    scale = 0.3 + 0.7 * (seed % 5) / 4  # different contrasts spread the distances from the origin
    pixels = (128 + scale * (rng.integers(0, 256, (36, 44, 3)) - 128)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def captions(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 10)))) + f" {i}" for i in range(count)]


def _split_by_distance(items: list, distances: np.ndarray) -> tuple[list, list]:
    order = np.argsort(distances, kind="stable")
    half = len(items) // 2
    return [items[i] for i in order[:half]], [items[i] for i in order[half:]]


def build_world(root: Path) -> dict:
    """Model folder ``root/hysac`` (calibrated, with distance statistics), its test data
    ``root/world.jsonl`` and the pictures; returns the paths and the labelled items."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    loaded = load_model("safeclip-tiny")
    folder = root / "hysac"
    metadata = {"method": "hysac", "base_model": "safeclip-tiny", "embedding_space": SPACE}
    save_model_dir(folder, loaded.model, loaded.model_cfg, loaded.preprocess_cfg, metadata=metadata)
    encoder = Encoder.load(folder, backend="torch", device="cpu")

    texts = captions(2 * NUM_QUADRUPLETS)
    pictures = [write_picture(root / f"picture{i}.png", i) for i in range(2 * NUM_QUADRUPLETS)]
    text_points = encoder.encode_text(texts)
    image_points = encoder.encode_image(pictures)
    safe_texts, unsafe_texts = _split_by_distance(texts, encoder.space.unsafe_score(text_points))
    safe_images, unsafe_images = _split_by_distance(pictures, encoder.space.unsafe_score(image_points))

    points = {"text_safe": encoder.encode_text(safe_texts), "text_unsafe": encoder.encode_text(unsafe_texts),
              "image_safe": encoder.encode_image(safe_images), "image_unsafe": encoder.encode_image(unsafe_images)}
    score = encoder.space.unsafe_score
    safe = np.concatenate([score(points["text_safe"]), score(points["image_safe"])])
    unsafe = np.concatenate([score(points["text_unsafe"]), score(points["image_unsafe"])])
    stats = class_distance_stats({name: torch.from_numpy(values) for name, values in points.items()}, CURVATURE)
    hysac = {
        "calibration": calibrate(safe, unsafe),
        "calibration_modality": {"text": calibrate(score(points["text_safe"]), score(points["text_unsafe"])),
                                 "image": calibrate(score(points["image_safe"]), score(points["image_unsafe"]))},
        "distance_stats": {name: value.to_dict() for name, value in stats.items()},
        "traversal": {"boundary": stats["image_safe"].p95, "target": "image_safe", "statistic": "p95",
                      "margin": 0.0},
    }
    save_model_dir(folder, loaded.model, loaded.model_cfg, loaded.preprocess_cfg,
                   metadata={**metadata, "hysac": hysac})

    rows = [{"safe_text": safe_texts[i], "unsafe_text": unsafe_texts[i], "safe_image": safe_images[i].name,
             "unsafe_image": unsafe_images[i].name, "label": ["dog", "cat"][i % 2]}
            for i in range(NUM_QUADRUPLETS)]
    data = root / "world.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"folder": folder, "data": data, "safe_texts": safe_texts, "unsafe_texts": unsafe_texts,
            "safe_images": safe_images, "unsafe_images": unsafe_images, "hysac": hysac}
