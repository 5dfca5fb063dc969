"""Embedding spaces: how a model's vectors are made, compared, stored in a vector database and queried.

A safeclip model embeds into one space, recorded in its ``safeclip.json`` (and export manifest).
Everything that stores or compares vectors (evaluation, the vector-database integrations, search)
asks the space instead of assuming unit vectors under cosine distance, so a method with another
geometry plugs in by registering a space (:func:`register_space`).

``cosine`` (this module): L2-normalised vectors on the unit sphere, stored as they are under cosine
distance. Other geometries (a hyperbolic space, say) are registered by the method that trains
them, from the method's own folder, and read back through :func:`space_from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ModelLoadError

COSINE = "cosine"
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class EmbeddingSpace:
    """The geometry of a model's embeddings (this class: the unit sphere under cosine).

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

    @property
    def normalizes(self) -> bool:
        """Whether embeddings are unit rows (the encoders L2-normalise their outputs)."""
        return True

    @property
    def has_unsafe_score(self) -> bool:
        """Whether :meth:`unsafe_score` measures something (it does in spaces that order by safety)."""
        return False

    def embed(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Raw projection outputs ``[N, dim]`` of the ``text`` or ``image`` tower as embeddings."""
        check_modality(modality)
        return torch.nn.functional.normalize(features.float(), dim=-1)

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

    def unsafe_score(self, embeddings: np.ndarray) -> np.ndarray | None:
        """A per-item unsafe score (larger = less safe), or None where the space has none."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim}


def register_space(kind: str, parse: Callable[[dict[str, Any], str], EmbeddingSpace]) -> None:
    """Make ``kind`` readable: ``parse(values, where)`` builds the space recorded as ``values``
    (already checked to have a positive integer ``dim``). A method registers the spaces it trains."""
    known = _PARSERS.get(kind)
    if known is not None and known is not parse:
        raise ValueError(f"embedding space '{kind}' is already registered")
    _PARSERS[kind] = parse


def space_from_dict(values: Any, where: str) -> EmbeddingSpace:
    """The space recorded as ``{"kind": ..., "dim": ...}`` (plus the kind's own keys) in ``where``
    (a file name for errors). Kinds other than cosine are registered by the methods that train
    them (see :func:`register_space`)."""
    if not isinstance(values, dict) or not _is_positive_int(values.get("dim")):
        raise ModelLoadError(f"{where}: 'embedding_space' must be an object with a positive integer 'dim'")
    kind = values.get("kind", COSINE)
    if kind not in _PARSERS:
        raise ModelLoadError(f"{where}: unknown embedding space '{kind}' (this version knows: {', '.join(_PARSERS)})")
    return _PARSERS[kind](values, where)


def model_space(metadata: dict[str, Any], embed_dim: int, where: str) -> EmbeddingSpace:
    """The space of ``metadata["embedding_space"]``; cosine with ``embed_dim`` when absent."""
    values = metadata.get("embedding_space") if isinstance(metadata, dict) else None
    if values is None:
        return cosine_space(int(embed_dim))
    space = space_from_dict(values, where)
    if space.dim != int(embed_dim):
        raise ModelLoadError(f"{where}: 'embedding_space.dim' is {space.dim} but the model embeds into "
                             f"{embed_dim} dimensions")
    return space


def positive_number(values: dict[str, Any], key: str, where: str) -> float:
    """``values[key]`` as a float; ModelLoadError naming ``embedding_space.key`` unless positive and finite."""
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ModelLoadError(f"{where}: 'embedding_space.{key}' must be a positive number, got {value!r}")
    return float(value)


def cosine_space(dim: int) -> EmbeddingSpace:
    return EmbeddingSpace(COSINE, int(dim))


def rows(values: np.ndarray, dtype=np.float32) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    return array[None, :] if array.ndim == 1 else array


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_PARSERS: dict[str, Callable[[dict[str, Any], str], EmbeddingSpace]] = {
    COSINE: lambda values, where: cosine_space(int(values["dim"])),
}
