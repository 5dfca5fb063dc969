"""Per-category scores judged and thresholded one category at a time, and their reliability.

A per-category classifier gives each item one probability per class. For one category, the items
of that category are the positives and every other item (safe, or of another category) the
negatives; an item is flagged in the category when its score is STRICTLY above the category's
threshold, as for every unsafe score in safeclip.

A threshold is chosen on labelled validation scores for a target recall (the share of the
category's items flagged) or a target precision (the share of flagged items that belong to it):

- target recall: the highest threshold that flags at least that share of the positives;
- target precision: the lowest threshold whose flagged items reach that precision (the most
  positives flagged at that precision); when no threshold reaches it, nothing is flagged and the
  report says the target was not reached.

The threshold lies halfway between the two neighbouring scores it separates (see
:func:`safeclip_sdk.metrics.calibration.threshold_between`), so a score recomputed by another
runtime is flagged the same.
"""

from __future__ import annotations

import math

import numpy as np

from . import moderation
from .calibration import threshold_between
from ..errors import SafeclipError

RECALL = "recall"
PRECISION = "precision"
TARGETS = (RECALL, PRECISION)
RELIABILITY_BINS = 10


def check_target(kind: str, value: float) -> None:
    """SafeclipError unless ``kind`` is recall or precision and ``value`` a fraction in (0, 1]."""
    if kind not in TARGETS:
        raise SafeclipError(f"the threshold target is 'recall' or 'precision', not {kind!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise SafeclipError(f"target {kind} must be a fraction in (0, 1], e.g. 0.95; got {value!r}")


def _split(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    if scores.shape != positives.shape:
        raise SafeclipError(f"{scores.size} scores but {positives.size} labels")
    if not positives.any() or positives.all():
        raise SafeclipError("a category's scores need at least one item of the category and one other item")
    return scores[~positives], scores[positives]


def category_auc(scores, positives) -> float:
    """ROC AUC of telling the category's items (``positives``) from every other item by score."""
    negatives, hits = _split(scores, positives)
    return moderation.roc_auc(negatives, hits)


def precision_recall(scores, positives, threshold: float) -> dict[str, float | int]:
    """Precision and recall (fractions) of flagging ``score > threshold``, with the counts.

    Precision is 1.0 when nothing is flagged (no flagged item is wrong)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    flagged = scores > threshold
    true_positives = int(np.sum(flagged & positives))
    return {"precision": true_positives / int(flagged.sum()) if flagged.any() else 1.0,
            "recall": true_positives / int(positives.sum()) if positives.any() else 0.0,
            "flagged": int(flagged.sum()), "positives": int(positives.sum()), "items": int(scores.size)}


def threshold_for_target(scores, positives, kind: str, value: float) -> dict:
    """The threshold meeting ``value`` of ``kind`` (recall or precision) on labelled scores.

    Returns ``{"threshold", "target": {"kind", "value"}, "reached", "precision", "recall",
    "flagged", "positives", "items"}``; the figures are those of the threshold on these scores.
    """
    check_target(kind, value)
    negatives, hits = _split(scores, positives)
    fpr, tpr, thresholds = moderation.roc_curve(negatives, hits)
    true_positives, false_positives = tpr * len(hits), fpr * len(negatives)
    flagged = true_positives + false_positives
    precision = np.divide(true_positives, flagged, out=np.ones_like(flagged), where=flagged > 0)
    if kind == RECALL:
        # tpr only rises as the threshold falls: the first index reaching the target is the highest threshold
        needed = math.ceil(value * len(hits) - 1e-9) / len(hits)
        best = int(np.flatnonzero(tpr >= needed - 1e-12)[0])
        reached = True
    else:
        meeting = np.flatnonzero((precision >= value - 1e-12) & (true_positives > 0))
        reached = meeting.size > 0
        best = int(meeting[np.argmax(tpr[meeting])]) if reached else 0  # ties: the highest threshold
    threshold = threshold_between(best, thresholds)
    return {"threshold": threshold, "target": {"kind": kind, "value": float(value)}, "reached": bool(reached),
            **precision_recall(scores, positives, threshold)}


def reliability(probabilities, outcomes, bins: int = RELIABILITY_BINS) -> dict:
    """The reliability curve of predicted probabilities against what happened, and its ECE.

    ``probabilities`` and ``outcomes`` (0/1) are flat arrays (every item's probability of every
    class, one-vs-rest). Bins of equal width over [0, 1]; ``ece`` is the expected calibration
    error, the item-weighted mean gap between a bin's mean probability and its observed share.
    Empty bins are left out of the curve.
    """
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), 0.0, 1.0)
    outcomes = np.asarray(outcomes, dtype=np.float64).ravel()
    if probabilities.shape != outcomes.shape or probabilities.size == 0:
        raise SafeclipError(f"reliability needs as many outcomes as probabilities, got {outcomes.size} and "
                            f"{probabilities.size}")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    curve = {"mean_probability": [], "observed": [], "count": []}
    ece = 0.0
    for bin_index in range(bins):
        members = index == bin_index
        if not members.any():
            continue
        mean, observed = float(probabilities[members].mean()), float(outcomes[members].mean())
        curve["mean_probability"].append(mean)
        curve["observed"].append(observed)
        curve["count"].append(int(members.sum()))
        ece += members.sum() / probabilities.size * abs(mean - observed)
    return {**curve, "ece": float(ece), "bins": bins}
