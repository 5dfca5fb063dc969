"""HySAC's safety traversal (geodesic redirection) and the distance-threshold calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.methods.hysac import lorentz as L
from safeclip_sdk.metrics.calibration import calibrate, is_unsafe
from safeclip_sdk.methods.hysac.traversal import (DistanceStats, SafetyTraversal, class_distance_stats,
                                                  distance_stats, safe_boundary, traverse)


def _points_at(distances: torch.Tensor, dim: int, curv: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(len(distances), dim, generator=generator), dim=-1)
    return L.exp_map0(distances[:, None] * direction, curv)


@pytest.mark.parametrize("curv", [0.3, 1.0, 4.0])
def test_traversal_moves_far_queries_to_the_boundary_along_their_geodesic(curv):
    tau = 0.8
    radii = torch.tensor([0.1, 0.5, 0.79, 0.81, 1.5, 3.0, 4.0])
    queries = _points_at(radii, 12, curv)
    moved_queries, moved = traverse(queries, curv, tau)
    assert moved.tolist() == (radii > tau).tolist()
    # within the boundary: untouched, bit for bit
    assert torch.equal(moved_queries[~moved], queries[~moved])
    # beyond it: exactly at distance tau ...
    torch.testing.assert_close(L.distance_to_origin(moved_queries[moved], curv), torch.full((int(moved.sum()),), tau))
    # ... in the same direction ...
    before = torch.nn.functional.normalize(L.log_map0(queries[moved], curv), dim=-1)
    after = torch.nn.functional.normalize(L.log_map0(moved_queries[moved], curv), dim=-1)
    torch.testing.assert_close(after, before)
    # ... on the geodesic from the origin to the query: d(O, q') + d(q', q) = d(O, q)
    torch.testing.assert_close(
        tau + L.distance(moved_queries[moved].double(), queries[moved].double(), curv),
        radii[moved].double(), rtol=1e-4, atol=1e-4)


def test_traversal_object_is_switchable():
    stats = {"image_safe": DistanceStats(mean=0.5, p05=0.3, p95=0.7, count=10)}
    queries = _points_at(torch.tensor([0.2, 2.0]), 6, 1.0)
    on = SafetyTraversal.from_stats(stats, 1.0)
    assert on.boundary == pytest.approx(0.7)
    assert L.distance_to_origin(on(queries), 1.0)[1].item() == pytest.approx(0.7, abs=1e-5)
    off = SafetyTraversal.from_stats(stats, 1.0, enabled=False)
    assert off(queries) is queries


def test_distance_statistics_over_a_reference_set():
    curv = 2.0
    radii = torch.linspace(0.1, 2.0, 200)
    stats = distance_stats(_points_at(radii, 8, curv), curv)
    expected = radii.double().numpy()
    assert stats.count == 200
    assert stats.mean == pytest.approx(expected.mean(), abs=1e-5)
    assert stats.p05 == pytest.approx(np.percentile(expected, 5), abs=1e-5)
    assert stats.p95 == pytest.approx(np.percentile(expected, 95), abs=1e-5)
    assert DistanceStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_boundary_from_per_class_statistics():
    curv = 1.0
    by_class = {"text_safe": _points_at(torch.full((20,), 0.3), 4, curv),
                "image_safe": _points_at(torch.full((20,), 0.6), 4, curv, seed=1),
                "text_unsafe": _points_at(torch.full((20,), 1.2), 4, curv, seed=2)}
    stats = class_distance_stats(by_class, curv)
    assert safe_boundary(stats) == pytest.approx(0.6, abs=1e-5)
    assert safe_boundary(stats, target="text_safe", statistic="mean", margin=0.1) == pytest.approx(0.4, abs=1e-5)
    with pytest.raises(SafeclipError, match="no distance statistics for class 'image_unsafe'"):
        safe_boundary(stats, target="image_unsafe")
    with pytest.raises(SafeclipError, match="statistic 'median'"):
        safe_boundary(stats, statistic="median")
    with pytest.raises(SafeclipError, match="unknown class 'texts'"):
        class_distance_stats({"texts": by_class["text_safe"]}, curv)
    with pytest.raises(SafeclipError, match="positive distance"):
        traverse(by_class["text_safe"], curv, -1.0)


def _brute_force_auc(safe: np.ndarray, unsafe: np.ndarray) -> float:
    diff = unsafe[:, None] - safe[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def _scores_at(threshold: float, safe: np.ndarray, unsafe: np.ndarray) -> tuple[float, float]:
    tp, tn = np.sum(unsafe > threshold), np.sum(safe <= threshold)
    return (tp + tn) / (len(safe) + len(unsafe)), (tp / len(unsafe) + tn / len(safe)) / 2


def test_calibration_on_separable_distances():
    rng = np.random.default_rng(0)
    safe, unsafe = rng.uniform(0.2, 0.4, 300), rng.uniform(0.6, 0.8, 100)
    report = calibrate(safe, unsafe)
    assert safe.max() < report["threshold"] < unsafe.min()
    assert report["auc"] == 1.0
    assert report["at_threshold"]["accuracy"] == 100.0
    assert not is_unsafe(safe, report["threshold"]).any() and is_unsafe(unsafe, report["threshold"]).all()
    json.dumps(report)  # plain JSON: no numpy scalars, no infinities
    assert "Infinity" not in json.dumps(report)


@pytest.mark.parametrize("objective", ["balanced_accuracy", "accuracy"])
def test_calibration_on_overlapping_distances_finds_the_best_threshold(objective):
    rng = np.random.default_rng(1)
    # imbalanced on purpose: the two objectives disagree
    safe, unsafe = rng.normal(0.5, 0.1, 900), rng.normal(0.65, 0.1, 100)
    report = calibrate(safe, unsafe, objective=objective)
    assert report["auc"] == pytest.approx(_brute_force_auc(safe, unsafe), abs=1e-12)
    assert 0.8 < report["auc"] < 0.9
    which = 0 if objective == "accuracy" else 1
    chosen = _scores_at(report["threshold"], safe, unsafe)[which]
    everything = np.sort(np.concatenate([safe, unsafe]))
    candidates = np.concatenate([[everything[0] - 1], (everything[1:] + everything[:-1]) / 2, [everything[-1]]])
    best = max(_scores_at(t, safe, unsafe)[which] for t in candidates)
    assert chosen == pytest.approx(best, abs=1e-12)
    assert report["at_threshold"]["accuracy"] == pytest.approx(100 * _scores_at(report["threshold"], safe, unsafe)[0])


def test_objectives_trade_accuracy_for_balance():
    rng = np.random.default_rng(2)
    safe, unsafe = rng.normal(0.5, 0.1, 900), rng.normal(0.65, 0.1, 100)
    by_accuracy = calibrate(safe, unsafe, objective="accuracy")
    balanced = calibrate(safe, unsafe)
    assert by_accuracy["threshold"] > balanced["threshold"]  # the rare class is flagged less
    assert by_accuracy["at_threshold"]["accuracy"] > balanced["at_threshold"]["accuracy"]
    assert balanced["at_threshold"]["balanced_accuracy"] > by_accuracy["at_threshold"]["balanced_accuracy"]


def test_calibration_curves():
    rng = np.random.default_rng(3)
    safe, unsafe = rng.normal(0.5, 0.1, 2000), rng.normal(0.7, 0.1, 2000)
    report = calibrate(safe, unsafe, max_curve_points=50)
    roc, curve = report["roc"], report["accuracy_curve"]
    assert len(roc["fpr"]) <= 50 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["threshold"])
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.all(np.diff(roc["threshold"]) < 0)
    # every point is what its threshold does, and the chosen threshold is one of them
    for fpr, tpr, threshold in zip(roc["fpr"], roc["tpr"], roc["threshold"]):
        assert fpr == pytest.approx(np.mean(safe > threshold)) and tpr == pytest.approx(np.mean(unsafe > threshold))
    at = roc["threshold"].index(report["threshold"])
    assert curve["balanced_accuracy"][at] == max(curve["balanced_accuracy"])
    assert 100 * curve["accuracy"][at] == pytest.approx(report["at_threshold"]["accuracy"])


def test_calibration_rejects_bad_input_in_one_line():
    with pytest.raises(SafeclipError, match="objective 'f1'"):
        calibrate([0.1], [0.9], objective="f1")
    with pytest.raises(SafeclipError, match="unsafe_distances must be a non-empty"):
        calibrate([0.1], [])
    with pytest.raises(SafeclipError, match=r"safe_distances\[1\] is nan"):
        calibrate([0.1, float("nan")], [0.9])
