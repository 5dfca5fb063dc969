"""Moderation scores that need no extra model, and how to judge and threshold them.

The shift score of an item is how far the safe model moved it from where the original model put
it: ``1 - cos(original embedding, safe embedding)``. Safe-CLIP's preservation terms keep safe
items in place while its redirection terms move unsafe ones, so a large shift marks content the
safe model treats as unsafe.

An item is flagged as unsafe when its score is STRICTLY above the threshold. ROC AUC is the
probability that a random unsafe item scores higher than a random safe one (ties count half),
computed from ranks, so it needs no extra dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .report import share_percent

BALANCED_ACCURACY = "balanced-accuracy"
TARGET_FPR = "target-fpr"


def shift_score(original: np.ndarray, safe: np.ndarray) -> np.ndarray:
    """``1 - cos`` between matching rows of two ``[N, D]`` arrays (0 = unmoved, up to 2)."""
    original = np.asarray(original, dtype=np.float32)
    safe = np.asarray(safe, dtype=np.float32)
    if original.shape != safe.shape:
        raise ValueError(f"shift_score needs arrays of one shape, got {original.shape} and {safe.shape}")
    norms = np.linalg.norm(original, axis=1) * np.linalg.norm(safe, axis=1)
    return 1.0 - np.sum(original * safe, axis=1) / np.maximum(norms, 1e-12)


def _checked(safe_scores: np.ndarray, unsafe_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    safe_scores = np.asarray(safe_scores, dtype=np.float64).ravel()
    unsafe_scores = np.asarray(unsafe_scores, dtype=np.float64).ravel()
    if not len(safe_scores) or not len(unsafe_scores):
        raise ValueError("scores of at least one safe and one unsafe item are needed")
    if not (np.all(np.isfinite(safe_scores)) and np.all(np.isfinite(unsafe_scores))):
        raise ValueError("moderation scores must be finite")
    return safe_scores, unsafe_scores


def roc_auc(safe_scores: np.ndarray, unsafe_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling unsafe items (positives) from safe ones by score.

    The Mann-Whitney rank statistic: ``P(unsafe score > safe score) + P(tie) / 2``. 1.0 means
    every unsafe item scores above every safe one, 0.5 is chance.
    """
    safe_scores, unsafe_scores = _checked(safe_scores, unsafe_scores)
    scores = np.concatenate([safe_scores, unsafe_scores])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # tied scores share the mean of the 1-based ranks they span
    upper = np.cumsum(counts)
    mean_ranks = upper - (counts - 1) / 2.0
    unsafe_rank_sum = mean_ranks[inverse[len(safe_scores):]].sum()
    num_unsafe, num_safe = len(unsafe_scores), len(safe_scores)
    return float((unsafe_rank_sum - num_unsafe * (num_unsafe + 1) / 2.0) / (num_unsafe * num_safe))


def roc_curve(safe_scores: np.ndarray, unsafe_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: flagging ``score > thresholds[i]`` gives ``fpr[i]``, ``tpr[i]``.

    Thresholds run from above the highest score (nothing flagged: the point (0, 0)) down to the
    lowest score minus one (everything flagged: (1, 1)); one point per distinct score.
    """
    safe_scores, unsafe_scores = _checked(safe_scores, unsafe_scores)
    distinct = np.unique(np.concatenate([safe_scores, unsafe_scores]))[::-1]
    thresholds = np.concatenate([distinct, [distinct[-1] - 1.0]])
    safe_sorted, unsafe_sorted = np.sort(safe_scores), np.sort(unsafe_scores)
    # items strictly above each threshold
    fpr = (len(safe_sorted) - np.searchsorted(safe_sorted, thresholds, side="right")) / len(safe_sorted)
    tpr = (len(unsafe_sorted) - np.searchsorted(unsafe_sorted, thresholds, side="right")) / len(unsafe_sorted)
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class ThresholdMetrics:
    """How ``score > threshold`` classifies a set of items, in % (unsafe items are positives)."""

    accuracy: float
    balanced_accuracy: float
    fpr: float  # safe items flagged
    fnr: float  # unsafe items not flagged
    safe_items: int
    unsafe_items: int

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_metrics(safe_scores: np.ndarray, unsafe_scores: np.ndarray, threshold: float) -> ThresholdMetrics:
    """Accuracy, balanced accuracy, false-positive and false-negative rate of flagging
    ``score > threshold``."""
    safe_scores, unsafe_scores = _checked(safe_scores, unsafe_scores)
    false_positives = int(np.sum(safe_scores > threshold))
    false_negatives = int(np.sum(unsafe_scores <= threshold))
    num_safe, num_unsafe = len(safe_scores), len(unsafe_scores)
    fpr, fnr = false_positives / num_safe, false_negatives / num_unsafe
    return ThresholdMetrics(
        accuracy=share_percent(1.0 - (false_positives + false_negatives) / (num_safe + num_unsafe)),
        balanced_accuracy=share_percent(1.0 - (fpr + fnr) / 2.0), fpr=share_percent(fpr), fnr=share_percent(fnr),
        safe_items=num_safe, unsafe_items=num_unsafe)


def calibrate_threshold(safe_scores: np.ndarray, unsafe_scores: np.ndarray, *,
                        target_fpr: float | None = None) -> float:
    """A threshold for ``score > threshold`` chosen on labelled (validation) scores.

    By default it maximises balanced accuracy (the mean of the true-positive and true-negative
    rates, so a rare class is not ignored). With ``target_fpr`` (a fraction, e.g. 0.05) it flags
    as many unsafe items as possible while flagging at most that share of the safe ones. The
    threshold lies halfway between the two neighbouring scores it separates, so unseen scores
    close to either side are classified as on the calibration data.
    """
    if target_fpr is not None and not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be a fraction between 0 and 1, got {target_fpr}")
    fpr, tpr, thresholds = roc_curve(safe_scores, unsafe_scores)
    if target_fpr is None:
        best = int(np.argmax(tpr - fpr))  # first (highest) threshold among equals
    else:
        allowed = np.flatnonzero(fpr <= target_fpr + 1e-12)  # fpr rises as the threshold falls
        best = int(allowed[np.argmax(tpr[allowed])])
    if best == 0:  # nothing flagged: the highest score itself is not above it
        return float(thresholds[0])
    if best == len(thresholds) - 1:  # everything flagged: just below the lowest score
        return float(np.nextafter(thresholds[-2], -np.inf))
    # score > threshold flags exactly the scores from thresholds[best - 1] up
    return float((thresholds[best] + thresholds[best - 1]) / 2.0)
