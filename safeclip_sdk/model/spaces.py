"""Embedding spaces: how a model's vectors are made, compared, stored in a vector database and queried.

A safeclip model embeds into one space, recorded in its ``safeclip.json`` (and export manifest).
Everything that stores or compares vectors (evaluation, the vector-database integrations, search)
asks the space instead of assuming unit vectors under cosine distance, so a method with another
geometry plugs in by adding a space here.

- ``cosine``: L2-normalised vectors on the unit sphere; stored as they are under cosine distance.
- ``lorentz``: points of the Lorentz model of hyperbolic space with curvature ``-c`` (HySAC), given
  by their ``D`` space components. An encoder's projection output ``f`` becomes the point
  ``exp_map0(scale * f)``, with one scale per modality. A vector database stores an item as
  ``[x_t, x]`` (time component first, ``D + 1`` numbers) under DOT distance and is queried with
  ``[-q_t, q]``: the dot product is then the Lorentz inner product, whose ranking is the
  geodesic-distance ranking. The distance from the origin is the item's unsafe score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ModelLoadError

COSINE = "cosine"
LORENTZ = "lorentz"
KINDS = (COSINE, LORENTZ)
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
        _check_modality(modality)
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


@dataclass(frozen=True)
class LorentzSpace(EmbeddingSpace):
    """The Lorentz model with curvature ``-curvature``; embeddings are the ``D`` space components."""

    curvature: float = 1.0
    text_scale: float = 1.0
    image_scale: float = 1.0

    @property
    def stored_dim(self) -> int:
        return self.dim + 1

    @property
    def distance(self) -> str:
        return "dot"

    @property
    def normalizes(self) -> bool:
        return False

    @property
    def has_unsafe_score(self) -> bool:
        return True

    def scale(self, modality: str) -> float:
        _check_modality(modality)
        return self.text_scale if modality == "text" else self.image_scale

    def embed(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """``exp_map0(scale * f)``: projection outputs as points (fp32 space components)."""
        from .methods.hysac.lorentz import exp_map0

        return exp_map0(features.float() * self.scale(modality), self.curvature)

    def time_component(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return np.sqrt(1.0 / self.curvature + np.einsum("nd,nd->n", points, points))

    def to_stored(self, embeddings: np.ndarray) -> np.ndarray:
        """``[x_t, x]``: the dot product with a :meth:`to_query` vector is the Lorentz inner product."""
        from .methods.hysac.lorentz import item_vectors

        return item_vectors(_rows(embeddings), self.curvature)

    def to_query(self, embeddings: np.ndarray) -> np.ndarray:
        """``[-q_t, q]``."""
        from .methods.hysac.lorentz import query_vectors

        return query_vectors(_rows(embeddings), self.curvature)

    def similarity(self, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Minus the geodesic distance ``[Q, N]`` (computed in float64)."""
        from .methods.hysac.lorentz import pairwise_distance

        distances = pairwise_distance(torch.from_numpy(_rows(queries, np.float64)),
                                      torch.from_numpy(_rows(items, np.float64)), self.curvature)
        return (-distances).numpy()

    def unsafe_score(self, embeddings: np.ndarray) -> np.ndarray:
        """The geodesic distance from the origin (HySAC puts unsafe content further out)."""
        from .methods.hysac.lorentz import distance_to_origin

        return distance_to_origin(torch.from_numpy(_rows(embeddings, np.float64)), self.curvature).numpy()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "curvature": self.curvature, "text_scale": self.text_scale,
                "image_scale": self.image_scale}


def space_from_dict(values: Any, where: str) -> EmbeddingSpace:
    """The space recorded as ``{"kind": ..., "dim": ...}`` (plus, for ``lorentz``, ``curvature``,
    ``text_scale`` and ``image_scale``) in ``where`` (a file name for errors)."""
    if not isinstance(values, dict) or not _is_positive_int(values.get("dim")):
        raise ModelLoadError(f"{where}: 'embedding_space' must be an object with a positive integer 'dim'")
    kind = values.get("kind", COSINE)
    if kind == COSINE:
        return EmbeddingSpace(COSINE, int(values["dim"]))
    if kind != LORENTZ:
        raise ModelLoadError(f"{where}: unknown embedding space '{kind}' (this version knows: {', '.join(KINDS)})")
    numbers = {}
    for key in ("curvature", "text_scale", "image_scale"):
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ModelLoadError(f"{where}: 'embedding_space.{key}' must be a positive number, got {value!r}")
        numbers[key] = float(value)
    return lorentz_space(int(values["dim"]), **numbers)


def cosine_space(dim: int) -> EmbeddingSpace:
    return EmbeddingSpace(COSINE, int(dim))


def lorentz_space(dim: int, curvature: float, text_scale: float, image_scale: float) -> LorentzSpace:
    return LorentzSpace(LORENTZ, int(dim), float(curvature), float(text_scale), float(image_scale))


def _rows(values: np.ndarray, dtype=np.float32) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    return array[None, :] if array.ndim == 1 else array


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
