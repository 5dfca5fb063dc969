"""The check before the alias switch: sampled points recomputed from their sources and compared.

Counts, ids and payloads are checked by the reconciliation pass just before (every id compared,
every payload hash equal after its repairs). Here a uniform sample of points is read from both
collections: re-embedded vectors must match a fresh embedding of the point's source (cosine at
least ``MIN_COSINE``), carried-over vectors and the vectors of points that kept their old ones
(``--on-error keep``) must equal the old collection's (up to float32 rounding, and
to scale under cosine distance, which Qdrant normalises); side by side, a point that kept its old
vectors has no safe vector even when its old point had one from an earlier reindex.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...integrations.base import PointId, VectorStore
from .pipeline import PointBuilder
from .plan import Plan, ReindexError, show_vector
from ..contract import ERROR_FIELD
from .reconcile import payload_hash

MIN_COSINE = 0.999
# Qdrant normalises vectors under cosine distance when it stores them (local mode only in memory,
# not in its files), so a copied vector may come back scaled, or one float32 rounding step off
CARRIED_TOLERANCE = 1e-6


@dataclass
class Verification:
    checked: int = 0
    recomputed_vectors: int = 0
    exact_vectors: int = 0
    changed_meanwhile: int = 0  # payload rewritten by the application between pass and check
    min_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_sample(store: VectorStore, plan: Plan, builder: PointBuilder, ids: Sequence[PointId]) -> Verification:
    """Check the sampled ``ids``; raises ``ReindexError`` naming the first point that differs."""
    reserved = plan.reserved_fields()
    old_points = {p.id: p for p in store.retrieve(plan.source, ids, with_vectors=True)}
    new_points = {p.id: p for p in store.retrieve(plan.target, ids, with_vectors=True)}
    pairs = [(old_points[i], new_points[i]) for i in ids if i in old_points and i in new_points]
    result = Verification()
    same = [(old, new) for old, new in pairs
            if payload_hash(old.payload, reserved) == payload_hash(new.payload, reserved)]
    result.changed_meanwhile = len(pairs) - len(same)
    if not same:
        return result
    fresh = {p.id: p for p in builder.build([old for old, _ in same]).points}
    replaced = set(plan.safe_names.values())
    added = plan.added_vectors()
    cosines = []
    for old, new in same:
        result.checked += 1
        where = f"verification of '{plan.target}' failed: point {old.id!r}"
        kept_old = ERROR_FIELD in new.payload
        for name, vector in new.vectors.items():
            if name in replaced and not kept_old:
                expected = fresh.get(old.id)
                if expected is None or name not in expected.vectors:
                    raise ReindexError(f"{where}: {show_vector(name)} is stored but its source now fails to embed")
                cosine = _cosine(vector, expected.vectors[name])
                cosines.append(cosine)
                result.recomputed_vectors += 1
                if cosine < MIN_COSINE:
                    raise ReindexError(f"{where}: {show_vector(name)} has cosine {cosine:.4f} to a fresh embedding "
                                       f"of its source (at least {MIN_COSINE} expected)")
            elif name in old.vectors:
                if not _same_vector(vector, old.vectors[name], plan.target_specs[name].distance):
                    raise ReindexError(f"{where}: carried-over {show_vector(name)} differs from the old collection's")
                result.exact_vectors += 1
        missing = [name for name in old.vectors if name not in new.vectors and not (kept_old and name in added)]
        if missing:
            raise ReindexError(f"{where}: {show_vector(missing[0])} of the old collection is missing")
    result.min_cosine = round(min(cosines), 6) if cosines else None
    return result


def _same_vector(new: np.ndarray, old: np.ndarray, distance: str) -> bool:
    if new.shape != old.shape:
        return False
    if distance == "cosine":
        new, old = (v / max(float(np.linalg.norm(v)), 1e-12) for v in (new, old))
    return float(np.max(np.abs(new - old), initial=0.0)) <= CARRIED_TOLERANCE


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
