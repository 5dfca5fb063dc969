"""Safety traversal: move queries that lie beyond the safe region back along their own geodesic.

HySAC places safe content near the origin and unsafe content further out, each in the direction
of its meaning. A query further from the origin than a safe boundary ``tau`` is moved along the
geodesic that joins it to the origin until it lies exactly at distance ``tau``: it keeps its
direction (its meaning) and loses the part that made it unsafe. Queries within ``tau`` are left
as they are, and the whole step can be switched off (a moderation team reviewing unsafe results
needs the query as it is).

The boundary comes from distance statistics of a reference set, kept per class (safe text ``T``,
safe image ``V``, unsafe text ``T*``, unsafe image ``V*``); by default it is the 95th percentile
of the safe class of the modality being searched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import SafeclipError
from . import lorentz as L

CLASSES = ("text_safe", "image_safe", "text_unsafe", "image_unsafe")
STATISTICS = ("mean", "p05", "p95")


@dataclass(frozen=True)
class DistanceStats:
    """Distance from the origin over one class of a reference set."""

    mean: float
    p05: float
    p95: float
    count: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping, where: str = "distance statistics") -> DistanceStats:
        try:
            stats = cls(mean=float(values["mean"]), p05=float(values["p05"]), p95=float(values["p95"]),
                        count=int(values["count"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SafeclipError(f"{where}: needs numbers 'mean', 'p05', 'p95' and 'count' ({exc})") from None
        return stats


def distance_stats(points: Tensor, curv: float | Tensor) -> DistanceStats:
    """Mean, 5th and 95th percentile of the distance from the origin of ``points`` ``[N, D]``."""
    if points.ndim != 2 or points.shape[0] == 0:
        raise SafeclipError(f"distance statistics need a non-empty [N, D] batch of points, got shape "
                            f"{tuple(points.shape)}")
    with torch.no_grad():
        distances = L.distance_to_origin(points, curv).double().cpu().numpy()
    if not np.all(np.isfinite(distances)):
        raise SafeclipError("distance statistics: some points are not finite")
    p05, p95 = np.percentile(distances, [5.0, 95.0])
    return DistanceStats(mean=float(distances.mean()), p05=float(p05), p95=float(p95), count=len(distances))


def class_distance_stats(points_by_class: Mapping[str, Tensor], curv: float | Tensor) -> dict[str, DistanceStats]:
    """:func:`distance_stats` for each class given (names from ``CLASSES``)."""
    unknown = [name for name in points_by_class if name not in CLASSES]
    if unknown:
        raise SafeclipError(f"distance statistics: unknown class '{unknown[0]}' (known: {', '.join(CLASSES)})")
    return {name: distance_stats(points, curv) for name, points in points_by_class.items()}


def safe_boundary(stats: Mapping[str, DistanceStats], target: str = "image_safe", statistic: str = "p95",
                  margin: float = 0.0) -> float:
    """The boundary ``tau``: ``statistic`` of class ``target`` plus ``margin``.

    For text queries against an image gallery the target is ``image_safe``; for image queries
    against texts, ``text_safe``.
    """
    if target not in stats:
        raise SafeclipError(f"safety traversal: no distance statistics for class '{target}' "
                            f"(have: {', '.join(stats) or 'none'})")
    if statistic not in STATISTICS:
        raise SafeclipError(f"safety traversal: statistic '{statistic}' is not one of {', '.join(STATISTICS)}")
    tau = getattr(stats[target], statistic) + margin
    if not math.isfinite(tau) or tau <= 0:
        raise SafeclipError(f"safety traversal: the boundary must be a positive distance, got {tau}")
    return float(tau)


def traverse(queries: Tensor, curv: float | Tensor, boundary: float) -> tuple[Tensor, Tensor]:
    """Move every query further than ``boundary`` from the origin to exactly ``boundary``.

    ``q' = exp_map0(boundary * u)`` with ``u = log_map0(q) / |log_map0(q)|``: the same geodesic
    from the origin, so the direction is kept. Returns the queries (fp32, others unchanged) and
    a ``[N]`` bool mask of the moved ones.
    """
    if not math.isfinite(boundary) or boundary <= 0:
        raise SafeclipError(f"safety traversal: the boundary must be a positive distance, got {boundary}")
    queries = L.as_float(queries)
    tangent = L.log_map0(queries, curv)
    distance = torch.linalg.vector_norm(tangent, dim=-1, keepdim=True)
    moved = distance > boundary
    redirected = L.exp_map0(tangent * (boundary / distance.clamp_min(L.MIN_NORM)), curv)
    return torch.where(moved, redirected, queries), moved.squeeze(-1)


@dataclass
class SafetyTraversal:
    """Traversal with its boundary and curvature, switchable: call it on a batch of query points."""

    boundary: float
    curv: float
    enabled: bool = True

    @classmethod
    def from_stats(cls, stats: Mapping[str, DistanceStats], curv: float, *, target: str = "image_safe",
                   statistic: str = "p95", margin: float = 0.0, enabled: bool = True) -> SafetyTraversal:
        return cls(boundary=safe_boundary(stats, target, statistic, margin), curv=float(curv), enabled=enabled)

    def __call__(self, queries: Tensor) -> Tensor:
        if not self.enabled:
            return queries
        return traverse(queries, self.curv, self.boundary)[0]
