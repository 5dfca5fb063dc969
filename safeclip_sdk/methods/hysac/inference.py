"""How a HySAC model is used after training: classification, safety traversal, what exports carry.

HySAC places unsafe content further from the origin of its hyperbolic space than safe content,
so the distance from the origin is an unsafe score: an item is unsafe when it lies beyond a
threshold calibrated on labelled validation data. A query lying beyond the safe region can be
moved back along its own geodesic to the safe boundary (the safety traversal) before searching.

The model folder's ``safeclip.json["hysac"]`` block holds what both read (:class:`HySACSettings`);
an ONNX export carries a copy in its manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ...errors import ModelLoadError, SafeclipError
from ..inference import Inference
from .space import LORENTZ, LorentzSpace
from .traversal import DistanceStats, safe_boundary, traverse

SETTINGS_KEY = "hysac"
# the safe class whose distances bound the traversal of a query, by the query's modality: text
# queries search images, image queries search texts
GALLERY_SAFE_CLASS = {"text": "image_safe", "image": "text_safe"}


@dataclass(frozen=True)
class HySACSettings:
    """The ``hysac`` block of a model folder: classification thresholds and traversal settings.

    ``threshold`` (None when never calibrated) classifies every modality unless ``thresholds``
    has one for it; ``distance_stats`` are per class (``text_safe``, ``image_safe``,
    ``text_unsafe``, ``image_unsafe``); ``traversal`` holds ``boundary`` (a fallback) and the
    ``statistic`` and ``margin`` the boundary is computed from.
    """

    threshold: float | None
    thresholds: dict[str, float] = field(default_factory=dict)
    distance_stats: dict[str, DistanceStats] = field(default_factory=dict)
    traversal: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Any, where: str) -> HySACSettings:
        """Parse and check a ``hysac`` block; ModelLoadError naming ``where`` and the key."""
        if not isinstance(values, Mapping):
            raise ModelLoadError(f"{where}: 'hysac' must be an object")
        threshold = _threshold(values.get("calibration"), f"{where}: 'hysac.calibration'")
        per_modality = values.get("calibration_modality") or {}
        if not isinstance(per_modality, Mapping):
            raise ModelLoadError(f"{where}: 'hysac.calibration_modality' must be an object")
        thresholds = {}
        for modality, report in per_modality.items():
            if modality not in GALLERY_SAFE_CLASS:
                raise ModelLoadError(f"{where}: 'hysac.calibration_modality.{modality}' is not text or image")
            thresholds[modality] = _threshold(report, f"{where}: 'hysac.calibration_modality.{modality}'")
        stats_values = values.get("distance_stats") or {}
        if not isinstance(stats_values, Mapping):
            raise ModelLoadError(f"{where}: 'hysac.distance_stats' must be an object")
        try:
            stats = {name: DistanceStats.from_dict(entry, f"{where}: 'hysac.distance_stats.{name}'")
                     for name, entry in stats_values.items()}
        except SafeclipError as error:
            raise ModelLoadError(str(error)) from None
        traversal = values.get("traversal") or {}
        if not isinstance(traversal, Mapping):
            raise ModelLoadError(f"{where}: 'hysac.traversal' must be an object")
        boundary = traversal.get("boundary")
        if boundary is not None and not _is_positive(boundary):
            raise ModelLoadError(f"{where}: 'hysac.traversal.boundary' must be a positive number, got {boundary!r}")
        return cls(threshold, {k: v for k, v in thresholds.items() if v is not None}, stats, dict(traversal),
                   dict(values))

    def threshold_for(self, modality: str) -> float:
        """The threshold classifying ``text`` or ``image`` items; SafeclipError when uncalibrated."""
        threshold = self.thresholds.get(modality, self.threshold)
        if threshold is None:
            raise SafeclipError("the model has no calibrated threshold: run `safeclip classify calibrate MODEL "
                                "--data val.jsonl` first")
        return threshold

    def boundary_for(self, query_modality: str) -> float:
        """The traversal boundary for queries of ``query_modality``: the safe class of the other
        modality (the gallery being searched), by the recorded statistic (default p95) plus margin."""
        target = GALLERY_SAFE_CLASS[query_modality]
        if target in self.distance_stats:
            return safe_boundary(self.distance_stats, target, self.traversal.get("statistic", "p95"),
                                 float(self.traversal.get("margin", 0.0)))
        if self.traversal.get("boundary") is not None:
            return float(self.traversal["boundary"])
        raise SafeclipError(f"the model records no distance statistics for '{target}' and no traversal boundary: "
                            f"safety traversal cannot run (search with traversal off)")

    def traverse(self, points: np.ndarray, query_modality: str, curvature: float) -> np.ndarray:
        """Queries (space components) moved back to the traversal boundary where they lie beyond it."""
        moved, _ = traverse(torch.from_numpy(np.asarray(points, dtype=np.float64)), curvature,
                            self.boundary_for(query_modality))
        return moved.numpy().astype(np.float32)


class HySACInference(Inference):
    """A HySAC model: the Lorentz space, the distance-from-origin classifier and the safety traversal."""

    query_transform: ClassVar[str] = "traversal"
    method_classifies: ClassVar[bool] = True
    space: LorentzSpace

    def __init__(self, space: LorentzSpace, method: str | None, settings: HySACSettings | None):
        super().__init__(space, method)
        self.settings = settings

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], space, method: str | None, where: str) -> HySACInference:
        if space.kind != LORENTZ:
            recorded = "no 'embedding_space'" if metadata.get("embedding_space") is None else f"a {space.kind} space"
            raise ModelLoadError(f"{where}: a HySAC model embeds into the {LORENTZ} space, but the file records "
                                 f"{recorded}")
        block = metadata.get(SETTINGS_KEY)
        return cls(space, method, None if block is None else HySACSettings.from_dict(block, where))

    @property
    def classifies(self) -> bool:
        return self.settings is not None

    def threshold(self, modality: str) -> float:
        if self.settings is None:
            raise self.no_classifier()
        return self.settings.threshold_for(modality)

    def calibrated_threshold(self, modality: str) -> float | None:
        if self.settings is None:
            return None
        return self.settings.thresholds.get(modality, self.settings.threshold)

    def recalibrated(self, metadata: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        block = dict(metadata.get(SETTINGS_KEY) or {})
        block.pop("calibration_split", None)  # the training split it was calibrated on no longer applies
        block.update(calibration=report["calibration"], calibration_modality=report["calibration_modality"],
                     calibrated_on=report["data"])
        return {**metadata, SETTINGS_KEY: block}

    def check_query_transform(self) -> None:
        if self.settings is None:
            raise SafeclipError(f"the model embeds into the {self.space.kind} space but records no traversal "
                                f"settings (no '{SETTINGS_KEY}' block): search with traversal=False (--no-traversal)")

    def transform_queries(self, embeddings: np.ndarray, modality: str) -> np.ndarray:
        self.check_query_transform()
        return self.settings.traverse(embeddings, modality, self.space.curvature)

    def export_metadata(self) -> dict[str, Any]:
        return {} if self.settings is None else {SETTINGS_KEY: self.settings.raw}


def _threshold(report: Any, where: str) -> float | None:
    if report is None:
        return None
    if not isinstance(report, Mapping) or not isinstance(report.get("threshold"), (int, float)) \
            or isinstance(report.get("threshold"), bool) or not math.isfinite(report["threshold"]):
        raise ModelLoadError(f"{where} must be an object with a finite number 'threshold'")
    return float(report["threshold"])


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
