"""Per-category thresholds for a target recall or precision, and reliability curves, against
values worked out by hand."""

import numpy as np
import pytest

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.metrics.category_calibration import (category_auc, precision_recall, reliability,
                                                       threshold_for_target)

# four items of the category and four others, scores chosen so every threshold is easy to follow
SCORES = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
POSITIVES = np.array([True] * 4 + [False] * 4)


@pytest.mark.parametrize("kind, value, threshold, precision, recall", [
    ("recall", 0.75, 0.5, 3 / 4, 3 / 4),     # 0.6 must be flagged; halfway to the next score, 0.4
    ("recall", 0.7, 0.5, 3 / 4, 3 / 4),      # 70% of 4 items rounds up to 3
    ("recall", 1.0, 0.25, 4 / 6, 1.0),       # 0.3 flagged too, with the 0.7 and 0.4 of other items
    ("precision", 1.0, 0.75, 1.0, 1 / 2),    # the most items of the category with nothing else flagged
    ("precision", 0.75, 0.5, 3 / 4, 3 / 4),  # 0.65 would give 2/3, 0.35 3/5
])
def test_threshold_for_a_target(kind, value, threshold, precision, recall):
    result = threshold_for_target(SCORES, POSITIVES, kind, value)
    assert result["threshold"] == pytest.approx(threshold)
    assert (result["precision"], result["recall"], result["reached"]) == (pytest.approx(precision), recall, True)
    assert result["target"] == {"kind": kind, "value": value}
    assert precision_recall(SCORES, POSITIVES, result["threshold"]) == {
        key: result[key] for key in ("precision", "recall", "flagged", "positives", "items")}


def test_an_unreachable_precision_flags_nothing_and_says_so():
    result = threshold_for_target([0.1, 0.9], [True, False], "precision", 0.9)
    assert result["reached"] is False and result["flagged"] == 0 and result["threshold"] > 0.9
    assert (result["precision"], result["recall"]) == (1.0, 0.0)


def test_bad_targets_and_labels_are_one_line_errors():
    with pytest.raises(SafeclipError, match="target recall must be a fraction in"):
        threshold_for_target(SCORES, POSITIVES, "recall", 1.5)
    with pytest.raises(SafeclipError, match="'recall' or 'precision'"):
        threshold_for_target(SCORES, POSITIVES, "f1", 0.5)
    with pytest.raises(SafeclipError, match="at least one item of the category and one other"):
        threshold_for_target(SCORES, np.ones(8, dtype=bool), "recall", 0.5)


def test_category_auc_counts_the_pairs():
    # of the 16 (category item, other item) pairs, the category item scores higher in 13
    assert category_auc(SCORES, POSITIVES) == pytest.approx(13 / 16)


def test_reliability_bins_and_expected_calibration_error():
    curve = reliability([0.05, 0.15, 0.95, 0.85], [0, 0, 1, 0])
    assert curve["count"] == [1, 1, 1, 1]
    assert curve["mean_probability"] == pytest.approx([0.05, 0.15, 0.85, 0.95])
    assert curve["observed"] == [0.0, 0.0, 0.0, 1.0]
    assert curve["ece"] == pytest.approx((0.05 + 0.15 + 0.85 + 0.05) / 4)
