"""Classification by an unsafe score: calibrate the threshold on labelled validation data.

An item is classified unsafe when its score (for a hyperbolic model, its distance from the
origin) is STRICTLY above a threshold. The threshold is chosen
on a validation split, maximising balanced accuracy (default; a rare class is not ignored) or
plain accuracy, and is reported with the whole curve so a team can pick another operating point.
"""

from __future__ import annotations

import numpy as np

from . import moderation
from ..errors import SafeclipError

OBJECTIVES = ("balanced_accuracy", "accuracy")


def is_unsafe(distances: np.ndarray, threshold: float) -> np.ndarray:
    """The classification: ``True`` where the distance from the origin is above ``threshold``."""
    return np.asarray(distances) > threshold


def _checked(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise SafeclipError(f"calibration: {name} must be a non-empty 1-D array, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise SafeclipError(f"calibration: {name}[{bad[0]}] is {array[bad[0]]}, distances must be finite")
    return array


def threshold_between(index: int, thresholds: np.ndarray) -> float:
    """A threshold classifying like ``thresholds[index]``, halfway between the scores around it.

    ``thresholds`` run from the highest score down (as ``moderation.roc_curve`` returns them). At
    the two ends (nothing flagged, everything flagged) the threshold lies half the neighbouring
    gap beyond the highest or lowest score, never on a score: a distance recomputed with other
    rounding (another runtime, an export) is classified the same.
    """
    scores = thresholds[:-1]  # the distinct scores; the last threshold is below all of them
    if index == 0:
        gap = scores[0] - scores[1] if len(scores) > 1 else 1.0
        return float(scores[0] + gap / 2.0)
    if index == len(thresholds) - 1:
        gap = scores[-2] - scores[-1] if len(scores) > 1 else 1.0
        return float(scores[-1] - gap / 2.0)
    return float((thresholds[index] + thresholds[index - 1]) / 2.0)


def _thinned(size: int, keep: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spread indices of ``range(size)``, always with 0, the last and ``keep``."""
    if size <= max_points:
        return np.arange(size)
    picks = np.linspace(0, size - 1, max(max_points - 1, 2)).round().astype(int)
    return np.unique(np.concatenate([picks, [keep]]))


def calibrate(safe_distances, unsafe_distances, *, objective: str = "balanced_accuracy",
              max_curve_points: int = 256) -> dict:
    """Choose the threshold on labelled distances from the origin; a JSON-serialisable report.

    Keys: ``threshold``, ``objective``, ``auc`` (ROC AUC as a fraction), ``at_threshold``
    (accuracy, balanced accuracy, false-positive and false-negative rates in %, item counts),
    ``roc`` (``fpr``, ``tpr``, ``threshold`` lists, fractions) and ``accuracy_curve``
    (``threshold``, ``accuracy``, ``balanced_accuracy`` lists, fractions). The curves have one
    point per distinct distance, thinned to at most ``max_curve_points`` (the chosen point kept).
    """
    if objective not in OBJECTIVES:
        raise SafeclipError(f"calibration: objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if isinstance(max_curve_points, bool) or not isinstance(max_curve_points, int) or max_curve_points < 3:
        raise SafeclipError(f"calibration: max_curve_points must be an integer >= 3, got {max_curve_points!r}")
    safe = _checked("safe_distances", safe_distances)
    unsafe = _checked("unsafe_distances", unsafe_distances)

    fpr, tpr, thresholds = moderation.roc_curve(safe, unsafe)
    accuracy = (tpr * len(unsafe) + (1.0 - fpr) * len(safe)) / (len(safe) + len(unsafe))
    balanced = (tpr + 1.0 - fpr) / 2.0
    best = int(np.argmax(balanced if objective == "balanced_accuracy" else accuracy))  # first = highest
    threshold = threshold_between(best, thresholds)

    shown = _thinned(len(thresholds), best, max_curve_points)
    # the curve's thresholds are those of its points: thresholds[0] flags nothing, the last everything
    curve_thresholds = [threshold_between(int(i), thresholds) for i in shown]
    return {
        "threshold": threshold,
        "objective": objective,
        "rule": "unsafe if the distance from the origin is above the threshold",
        "auc": moderation.roc_auc(safe, unsafe),
        "at_threshold": moderation.threshold_metrics(safe, unsafe, threshold).to_dict(),
        "roc": {"fpr": fpr[shown].tolist(), "tpr": tpr[shown].tolist(), "threshold": curve_thresholds},
        "accuracy_curve": {"threshold": curve_thresholds, "accuracy": accuracy[shown].tolist(),
                           "balanced_accuracy": balanced[shown].tolist()},
    }
