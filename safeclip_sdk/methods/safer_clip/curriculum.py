"""SafeR-CLIP's easy-to-hard curriculum over the similarity of each unsafe item to its target.

An unsafe caption whose proximity target is very similar is an easy redirection; one whose
nearest safe caption is far away is hard. Training starts with the easy items and adds harder
ones stage by stage: with the default quantiles (2/3, 1/3) and one epoch per stage, the first
epoch trains on the third of the items most similar to their targets, the second on the two
thirds, and every later epoch on everything. The published description gives no thresholds,
so they are quantiles of the similarity distribution, configurable with the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import SafeclipError


@dataclass(frozen=True)
class Curriculum:
    """Stage ``k`` (``epochs_per_stage[k]`` epochs long) keeps the items whose similarity is at
    least the ``quantiles[k]`` quantile; after the last stage every item is kept. Epochs count
    from 0. ``enabled=False`` keeps every item from the start."""

    quantiles: tuple[float, ...] = (2 / 3, 1 / 3)
    epochs_per_stage: tuple[int, ...] = (1, 1)
    enabled: bool = True

    def __post_init__(self):
        quantiles, epochs = tuple(self.quantiles), tuple(self.epochs_per_stage)
        if len(quantiles) != len(epochs):
            raise SafeclipError(f"curriculum: {len(quantiles)} quantiles but {len(epochs)} entries in "
                                "epochs_per_stage (one each per stage)")
        for q in quantiles:
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 <= q <= 1:
                raise SafeclipError(f"curriculum: quantile {q!r} is not a number between 0 and 1")
        if any(later >= earlier for earlier, later in zip(quantiles, quantiles[1:])):
            raise SafeclipError(f"curriculum: quantiles must decrease from stage to stage (easy first), got "
                                f"{list(quantiles)}")
        for n in epochs:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise SafeclipError(f"curriculum: epochs_per_stage entries must be positive integers, got {n!r}")
        object.__setattr__(self, "quantiles", tuple(float(q) for q in quantiles))
        object.__setattr__(self, "epochs_per_stage", epochs)

    def stage(self, epoch: int) -> int:
        """The stage of ``epoch``; ``len(quantiles)`` is the final stage (all items)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise SafeclipError(f"curriculum: epoch must be an integer >= 0, got {epoch!r}")
        if not self.enabled:
            return len(self.quantiles)
        ends = np.cumsum(self.epochs_per_stage)
        return int(np.searchsorted(ends, epoch, side="right"))

    def thresholds(self, similarities: np.ndarray) -> list[float]:
        """The similarity each stage requires, stage by stage."""
        return [float(t) for t in np.quantile(_checked(similarities), self.quantiles)]

    def indices(self, similarities: np.ndarray, epoch: int) -> np.ndarray:
        """The (sorted) item indices of ``epoch``, from each item's similarity to its target."""
        similarities = _checked(similarities)
        stage = self.stage(epoch)
        if stage == len(self.quantiles):
            return np.arange(len(similarities), dtype=np.int64)
        threshold = np.quantile(similarities, self.quantiles[stage])
        return np.flatnonzero(similarities >= threshold).astype(np.int64)

    def to_dict(self) -> dict:
        return {"quantiles": list(self.quantiles), "epochs_per_stage": list(self.epochs_per_stage),
                "enabled": self.enabled}


def _checked(similarities) -> np.ndarray:
    array = np.asarray(similarities, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise SafeclipError(f"curriculum: similarities must be a non-empty 1-D array, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise SafeclipError(f"curriculum: similarity of item {bad[0]} is {array[bad[0]]}, not a finite number")
    return array
