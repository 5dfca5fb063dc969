import numpy as np
import pytest

from safeclip_sdk.metrics.moderation import calibrate_threshold, roc_auc, roc_curve, shift_score, threshold_metrics


def test_shift_score_is_one_minus_cosine():
    original = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    safe = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(shift_score(original, safe), [0.0, 1.0, 2.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        shift_score(original, safe[:2])


def test_roc_auc_on_a_hand_computed_case_with_a_tie():
    # pairs (unsafe, safe): 0.8 beats all three safe scores (3); 0.4 beats 0.1 and 0.35 and ties 0.4 (2.5)
    assert roc_auc([0.1, 0.4, 0.35], [0.8, 0.4]) == pytest.approx(5.5 / 6)
    assert roc_auc([0.1, 0.2], [0.3, 0.9]) == 1.0
    assert roc_auc([0.3, 0.9], [0.1, 0.2]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5


def test_roc_auc_matches_the_pairwise_definition_and_the_curve_area():
    rng = np.random.default_rng(0)
    safe = np.round(rng.normal(0.0, 1.0, 60), 1)  # rounded: many ties
    unsafe = np.round(rng.normal(0.8, 1.0, 40), 1)
    pairwise = np.mean((unsafe[:, None] > safe[None, :]) + 0.5 * (unsafe[:, None] == safe[None, :]))
    assert roc_auc(safe, unsafe) == pytest.approx(pairwise)
    fpr, tpr, thresholds = roc_curve(safe, unsafe)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(pairwise)
    # each point is what flagging score > threshold does
    for i in (1, len(fpr) // 2, len(fpr) - 2):
        assert fpr[i] == np.mean(safe > thresholds[i]) and tpr[i] == np.mean(unsafe > thresholds[i])


def test_threshold_metrics_count_strictly_above_as_flagged():
    metrics = threshold_metrics([0.1, 0.2, 0.3, 0.6], [0.3, 0.7], threshold=0.3)
    # flagged: safe 0.6 (false positive); not flagged: unsafe 0.3 (false negative)
    assert (metrics.fpr, metrics.fnr) == (25.0, 50.0)
    assert metrics.accuracy == pytest.approx(100 * 4 / 6, abs=1e-4)
    assert metrics.balanced_accuracy == 62.5
    assert (metrics.safe_items, metrics.unsafe_items) == (4, 2)


def test_calibration_maximises_balanced_accuracy_halfway_between_scores():
    safe = [0.01, 0.02, 0.05, 0.30]
    unsafe = [0.20, 0.40, 0.90]
    threshold = calibrate_threshold(safe, unsafe)
    # best split: flag 0.20 and up (TPR 1, FPR 0.25); halfway between 0.05 and 0.20
    assert threshold == pytest.approx(0.125)
    metrics = threshold_metrics(safe, unsafe, threshold)
    assert (metrics.fpr, metrics.fnr) == (25.0, 0.0)


def test_calibration_at_a_target_false_positive_rate():
    safe = np.arange(10) / 10  # 0.0 ... 0.9
    unsafe = [0.55, 0.85, 1.5, 2.0]
    threshold = calibrate_threshold(safe, unsafe, target_fpr=0.1)
    assert threshold == pytest.approx(0.825)  # flags 0.9 (1 of 10 safe) and 3 of 4 unsafe
    metrics = threshold_metrics(safe, unsafe, threshold)
    assert (metrics.fpr, metrics.fnr) == (10.0, 25.0)
    assert calibrate_threshold(safe, unsafe, target_fpr=0.0) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="fraction"):
        calibrate_threshold(safe, unsafe, target_fpr=5)


def test_calibration_edge_cases_flag_nothing_or_everything():
    # unsafe scores below the safe ones: the best is to flag nothing
    nothing = calibrate_threshold([0.8, 0.9], [0.1, 0.2])
    assert threshold_metrics([0.8, 0.9], [0.1, 0.2], nothing).fpr == 0.0
    # every item flagged is the only way to meet a 100% FPR budget with full recall
    everything = calibrate_threshold([0.1, 0.2], [0.1, 0.3], target_fpr=1.0)
    assert threshold_metrics([0.1, 0.2], [0.1, 0.3], everything).fnr == 0.0


def test_scores_must_be_finite_and_present():
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [0.1])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0.1, np.nan], [0.2])
