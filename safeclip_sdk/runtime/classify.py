"""Safe/unsafe classification with a HySAC model, and the calibration of its threshold.

HySAC places unsafe content further from the origin of its hyperbolic space than safe content,
so the distance from the origin is an unsafe score: an item is unsafe when it lies beyond a
threshold calibrated on labelled validation data and stored in the model folder.

>>> classify("runs/hysac/model", texts=["a photo of a cat"])
[Classification(label='safe', score=0.41)]
>>> calibrate_model("runs/hysac/model", "data/val.jsonl", plot_path="calib.png")

The model folder's ``safeclip.json["hysac"]`` block holds what classification and traversal
read (see :class:`HySACSettings`); an ONNX export carries a copy in its manifest.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ModelLoadError, SafeclipError
from .methods.hysac.calibration import OBJECTIVES, calibrate
from .methods.hysac.traversal import DistanceStats, safe_boundary, traverse

SAFE_LABEL = "safe"
UNSAFE_LABEL = "unsafe"
# the safe class whose distances bound the traversal of a query, by the query's modality: text
# queries search images, image queries search texts
GALLERY_SAFE_CLASS = {"text": "image_safe", "image": "text_safe"}


class Classification(NamedTuple):
    """One item's verdict: ``label`` ``safe`` or ``unsafe`` and its ``score`` (distance from the origin)."""

    label: str
    score: float


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


def classify(model, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None, *,
             threshold: float | None = None, backend: str = "auto", device: str = "auto",
             batch_size: int = 32) -> list[Classification]:
    """Classify texts, then images, as safe or unsafe by their distance from the origin.

    Args:
        model: a loaded ``safeclip_sdk.encoder.Encoder``, or a HySAC model folder or ONNX
            export to load one from (``backend``, ``device`` as for ``Encoder.load``).
        texts, images: what to classify (images: paths, encoded bytes or PIL images).
        threshold: classify with this threshold instead of the calibrated one.

    Returns:
        One :class:`Classification` per text, then per image, in order.

    Raises:
        SafeclipError: the model has no classifier (a cosine-space model) or no threshold.
    """
    texts, images = list(texts or []), list(images or [])
    if not texts and not images:
        raise SafeclipError("nothing to classify: give texts and/or images")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise SafeclipError(f"threshold must be a finite number, got {threshold!r}")
    encoder = model if hasattr(model, "encode_text") else _load_encoder(model, backend, device, batch_size)
    settings = classifier_settings(encoder)
    results = []
    for modality, items in (("text", texts), ("image", images)):
        if not items:
            continue
        points = encoder.encode_text(items) if modality == "text" else encoder.encode_image(items)
        scores = encoder.space.unsafe_score(points)
        limit = threshold if threshold is not None else settings.threshold_for(modality)
        results += [Classification(UNSAFE_LABEL if score > limit else SAFE_LABEL, float(score)) for score in scores]
    return results


def classifier_settings(encoder) -> HySACSettings:
    """The encoder's HySAC settings; SafeclipError for a model without an unsafe classifier."""
    settings = getattr(encoder, "hysac", None)
    if not encoder.space.has_unsafe_score or settings is None:
        raise SafeclipError(f"the model embeds into the {encoder.space.kind} space and has no unsafe classifier: "
                            f"classification needs a HySAC model (safeclip train --method hysac)")
    return settings


def calibrate_model(model_dir: str | os.PathLike, data, *, image_root: str | os.PathLike | None = None,
                    unsafe_image_root: str | os.PathLike | None = None, skip_bad: bool = False,
                    objective: str = "balanced_accuracy", plot_path: str | os.PathLike | None = None,
                    json_path: str | os.PathLike | None = None, device: str = "auto",
                    batch_size: int = 32) -> dict[str, Any]:
    """Recalibrate a HySAC model folder's threshold on labelled validation quadruplets.

    The safe and unsafe texts (and images, when every quadruplet has an unsafe one) are
    embedded, their distances from the origin calibrated together (``hysac.calibration``) and
    per modality (``hysac.calibration_modality``); both are written into the folder's
    ``safeclip.json`` atomically, its other keys kept. ``plot_path`` gets the calibration curve
    (ROC and accuracy against threshold) as a PNG, ``json_path`` the whole report.

    Returns:
        ``{"calibration": ..., "calibration_modality": {...}, "data": ..., "quadruplets": N}``.
    """
    from .data.loading import load_dataset
    from .encoder import Encoder
    from .models import METADATA_FILE, atomic_write_text

    if objective not in OBJECTIVES:
        raise SafeclipError(f"calibration objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    folder = Path(str(model_dir).removeprefix("local-dir:")).expanduser()
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        raise SafeclipError(f"{folder}: not a safeclip model folder (no {METADATA_FILE}); calibration writes "
                            f"the threshold there")
    encoder = Encoder.load(folder, backend="torch", device=device, batch_size=batch_size)
    if not encoder.space.has_unsafe_score:
        raise SafeclipError(f"{folder}: the model embeds into the {encoder.space.kind} space and has no unsafe "
                            f"score to calibrate (calibration needs a HySAC model)")
    dataset = data if hasattr(data, "items") else load_dataset(data, image_root=image_root,
                                                               unsafe_image_root=unsafe_image_root, skip_bad=skip_bad)
    scores = labelled_scores(encoder, dataset.items)
    safe = np.concatenate([pair[0] for pair in scores.values()])
    unsafe = np.concatenate([pair[1] for pair in scores.values()])
    report = {"data": str(getattr(dataset, "path", "")), "quadruplets": len(dataset.items),
              "calibration": {**calibrate(safe, unsafe, objective=objective), "modalities": list(scores)},
              "calibration_modality": {modality: calibrate(s, u, objective=objective)
                                       for modality, (s, u) in scores.items()}}

    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    block = dict(metadata.get("hysac") or {})
    block.pop("calibration_split", None)  # the training split it was calibrated on no longer applies
    block.update(calibration=report["calibration"], calibration_modality=report["calibration_modality"],
                 calibrated_on=report["data"])
    metadata["hysac"] = block
    atomic_write_text(metadata_path, json.dumps(metadata, indent=2, default=str))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(json_path), json.dumps(report, indent=2) + "\n")
    if plot_path is not None:
        from .calibration_plot import draw_calibration

        draw_calibration(report, plot_path)
    return report


def labelled_scores(encoder, items) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"text": (safe, unsafe), "image": (safe, unsafe)?}`` distances from the origin; images only
    when every quadruplet has an unsafe image."""
    if not items:
        raise SafeclipError("no quadruplets to calibrate on")
    score = encoder.space.unsafe_score
    scores = {"text": (score(encoder.encode_text([item.safe_text for item in items])),
                       score(encoder.encode_text([item.unsafe_text for item in items])))}
    if all(item.unsafe_image is not None for item in items):
        scores["image"] = (score(encoder.encode_image([item.safe_image for item in items])),
                           score(encoder.encode_image([item.unsafe_image for item in items])))
    return scores


def _load_encoder(model, backend: str, device: str, batch_size: int):
    from .encoder import Encoder

    return Encoder.load(model, backend=backend, device=device, batch_size=batch_size)


def _threshold(report: Any, where: str) -> float | None:
    if report is None:
        return None
    if not isinstance(report, Mapping) or not isinstance(report.get("threshold"), (int, float)) \
            or isinstance(report.get("threshold"), bool) or not math.isfinite(report["threshold"]):
        raise ModelLoadError(f"{where} must be an object with a finite number 'threshold'")
    return float(report["threshold"])


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
