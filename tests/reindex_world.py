"""Small real collections for the reindex tests: text (and image) payloads, original vectors."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from safeclip_sdk.integrations.base import DEFAULT_VECTOR, Point, VectorSpec
from safeclip_sdk.index.contract import ERROR_FIELD

WORDS = ["cat", "dog", "red", "car", "tree", "beach", "city", "night", "snow", "bird", "boat", "lamp"]
RESERVED = (ERROR_FIELD, "safeclip_shift")


def text_of(number: int) -> str:
    return f"a photo of a {WORDS[number % len(WORDS)]} and a {WORDS[(number * 7 + 3) % len(WORDS)]} #{number}"


def original_vector(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def make_text_collection(store, name: str, count: int, dim: int, *, alias: str | None = None, step: int = 1,
                         vector: str = DEFAULT_VECTOR, seed: int = 0) -> dict[int, dict]:
    """A collection of ``count`` points with ids ``0, step, 2*step, ...``, payload ``{"text", "n"}``;
    behind ``alias`` when given. Returns the payloads by id."""
    rng = np.random.default_rng(seed)
    store.create_collection(name, {vector: VectorSpec(dim, "cosine")})
    payloads = {i * step: {"text": text_of(i * step), "n": i * step} for i in range(count)}
    points = [Point(i, payload, {vector: original_vector(rng, dim)}) for i, payload in payloads.items()]
    for start in range(0, len(points), 128):
        store.upsert(name, points[start:start + 128])
    if alias:
        store.switch_alias(alias, name)
    return payloads


def everything(store, collection: str, with_vectors=True) -> dict:
    """Every point of ``collection`` by id."""
    points, start = [], None
    while True:
        page, start = store.scroll(collection, start=start, limit=256, with_vectors=with_vectors)
        points += page
        if start is None:
            return {point.id: point for point in points}


def without_reserved(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key not in RESERVED}


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def write_image(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)).save(path)


@contextlib.contextmanager
def fast_folder(fallback):
    """A folder in RAM (/dev/shm) where there is one: qdrant-client's local mode commits to SQLite
    once per point, which a busy disk makes slow; the store behaves the same either way."""
    if not os.path.isdir("/dev/shm"):
        yield fallback
        return
    folder = tempfile.mkdtemp(prefix="safeclip-reindex-", dir="/dev/shm")
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
