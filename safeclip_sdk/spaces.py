"""Embedding spaces: how a model's vectors are compared, stored in a vector database and queried.

A safeclip model embeds into one space, recorded in its ``safeclip.json`` (and export manifest).
Everything that stores or compares vectors (evaluation, the vector-database integrations, search)
asks the space instead of assuming unit vectors under cosine distance, so a method with another
geometry plugs in by adding a space here.

- ``cosine``: L2-normalised vectors on the unit sphere; stored as they are under cosine distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelLoadError

COSINE = "cosine"


@dataclass(frozen=True)
class EmbeddingSpace:
    """The geometry of a model's embeddings.

    ``dim`` is the embedding size the encoders output; ``stored_dim`` and ``distance`` are what a
    vector database collection needs (``distance`` is one of ``cosine``, ``dot``, ``euclid``).
    """

    kind: str
    dim: int

    @property
    def stored_dim(self) -> int:
        return self.dim

    @property
    def distance(self) -> str:
        return "cosine"

    def to_stored(self, embeddings: np.ndarray) -> np.ndarray:
        """Item embeddings ``[N, dim]`` as the vectors to store ``[N, stored_dim]``."""
        return np.asarray(embeddings, dtype=np.float32)

    def to_query(self, embeddings: np.ndarray) -> np.ndarray:
        """Query embeddings as the vectors to search with (same ranking as ``similarity``)."""
        return np.asarray(embeddings, dtype=np.float32)

    def similarity(self, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores ``[Q, N]`` between embeddings; larger means closer."""
        queries = np.asarray(queries, dtype=np.float32)
        items = np.asarray(items, dtype=np.float32)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        items = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
        return queries @ items.T

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim}


def space_from_dict(values: Any, where: str) -> EmbeddingSpace:
    """The space recorded as ``{"kind": ..., "dim": ...}`` in ``where`` (a file name for errors)."""
    if not isinstance(values, dict) or not isinstance(values.get("dim"), int) or values["dim"] < 1:
        raise ModelLoadError(f"{where}: 'embedding_space' must be an object with a positive integer 'dim'")
    kind = values.get("kind", COSINE)
    if kind != COSINE:
        raise ModelLoadError(f"{where}: unknown embedding space '{kind}' (this version knows: {COSINE})")
    return EmbeddingSpace(kind, int(values["dim"]))


def cosine_space(dim: int) -> EmbeddingSpace:
    return EmbeddingSpace(COSINE, int(dim))
