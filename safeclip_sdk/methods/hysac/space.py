"""HySAC's embedding space: the Lorentz model of hyperbolic space, registered as ``lorentz``.

Points are given by their ``D`` space components. An encoder's projection output ``f`` becomes the
point ``exp_map0(scale * f)``, with one scale per modality. A vector database stores an item as
``[x_t, x]`` (time component first, ``D + 1`` numbers) under DOT distance and is queried with
``[-q_t, q]``: the dot product is then the Lorentz inner product, whose ranking is the
geodesic-distance ranking. The distance from the origin is the item's unsafe score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...model.spaces import EmbeddingSpace, check_modality, positive_number, register_space, rows
from . import lorentz as L

LORENTZ = "lorentz"


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
        check_modality(modality)
        return self.text_scale if modality == "text" else self.image_scale

    def embed(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """``exp_map0(scale * f)``: projection outputs as points (fp32 space components)."""
        return L.exp_map0(features.float() * self.scale(modality), self.curvature)

    def time_component(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return np.sqrt(1.0 / self.curvature + np.einsum("nd,nd->n", points, points))

    def to_stored(self, embeddings: np.ndarray) -> np.ndarray:
        """``[x_t, x]``: the dot product with a :meth:`to_query` vector is the Lorentz inner product."""
        return L.item_vectors(rows(embeddings), self.curvature)

    def to_query(self, embeddings: np.ndarray) -> np.ndarray:
        """``[-q_t, q]``."""
        return L.query_vectors(rows(embeddings), self.curvature)

    def similarity(self, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Minus the geodesic distance ``[Q, N]`` (computed in float64)."""
        distances = L.pairwise_distance(torch.from_numpy(rows(queries, np.float64)),
                                        torch.from_numpy(rows(items, np.float64)), self.curvature)
        return (-distances).numpy()

    def unsafe_score(self, embeddings: np.ndarray) -> np.ndarray:
        """The geodesic distance from the origin (HySAC puts unsafe content further out)."""
        return L.distance_to_origin(torch.from_numpy(rows(embeddings, np.float64)), self.curvature).numpy()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "curvature": self.curvature, "text_scale": self.text_scale,
                "image_scale": self.image_scale}


def lorentz_space(dim: int, curvature: float, text_scale: float, image_scale: float) -> LorentzSpace:
    return LorentzSpace(LORENTZ, int(dim), float(curvature), float(text_scale), float(image_scale))


def _parse(values: dict[str, Any], where: str) -> LorentzSpace:
    return lorentz_space(int(values["dim"]), *(positive_number(values, key, where)
                                               for key in ("curvature", "text_scale", "image_scale")))


register_space(LORENTZ, _parse)
