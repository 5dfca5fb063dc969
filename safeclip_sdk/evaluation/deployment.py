"""Which deployment of a safe model is safer: measured, base and safe model side by side.

A collection was embedded with a base model B; a safe model S can be deployed four ways:

- ``base``: queries and gallery embedded with B (nothing changes);
- ``query-side``: queries embedded with S, the gallery keeps B's original vectors;
- ``full-reindex``: queries and gallery embedded with S;
- ``side-by-side``: the collection keeps B's vectors, adds S's, and stores a per-item moderation
  score (the shift score of :mod:`safeclip_sdk.metrics.moderation`); measured as a query-side search
  whose results drop every item scoring above a threshold calibrated on validation data.

Each is measured in both directions on one quadruplet dataset: text queries against the N safe
then N unsafe images (2N), and image queries against the N safe then N unsafe captions. For
UNSAFE queries the ground truth is the safe counterpart (R@K) and the unsafe top-1 rate counts
queries whose best result is unsafe; for SAFE queries the ground truth is their own match and the
**safe-query leak** counts safe queries whose best result is unsafe. Both rates: lower is safer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.loading import load_dataset
from ..data.quadruplets import QuadrupletSet
from ..index.contract import BASE, DEPLOYMENTS, FULL_REINDEX, QUERY_SIDE, SIDE_BY_SIDE
from .deployment_report import DeploymentReport, recommend
from .._utils.devices import resolve_device
from ..errors import SafeclipError
from .protocol import ModelSpec, encode_quadruplets, load_model_spec
from ..metrics.retrieval import DEPLOYMENT_KS, EmbeddingSet, Similarity, cosine, direction_metrics
from ..metrics.moderation import (BALANCED_ACCURACY, TARGET_FPR, calibrate_threshold, roc_auc, roc_curve, shift_score,
                                  threshold_metrics)


TEXT_QUERIES = "text queries"
IMAGE_QUERIES = "image queries"
IMAGES = "images"
TEXTS = "texts"

DEFAULT_MIN_SAFE_RECALL_RATIO = 0.5


def shift_scores(base: EmbeddingSet, safe: EmbeddingSet) -> dict[str, dict[str, np.ndarray]]:
    """``{"images"|"texts": {"safe": scores, "unsafe": scores}}``; images only with unsafe images."""
    if base.safe_text.shape[1] != safe.safe_text.shape[1]:
        raise SafeclipError(f"the base model embeds into {base.safe_text.shape[1]} dimensions and the safe model into "
                            f"{safe.safe_text.shape[1]}: query-side search and the shift score need one space")
    scores = {TEXTS: {"safe": shift_score(base.safe_text, safe.safe_text),
                      "unsafe": shift_score(base.unsafe_text, safe.unsafe_text)}}
    image_scores = {"safe": shift_score(base.safe_image, safe.safe_image)}
    if base.unsafe_image is not None and safe.unsafe_image is not None:
        image_scores["unsafe"] = shift_score(base.unsafe_image, safe.unsafe_image)
    scores[IMAGES] = image_scores
    return scores


def moderation_metrics(test_scores: dict[str, dict[str, np.ndarray]],
                       val_scores: dict[str, dict[str, np.ndarray]] | None = None, *,
                       target_fpr: float | None = None,
                       thresholds: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """ROC AUC of the shift score per modality on test, a threshold (given, or calibrated on
    validation scores, or on the test scores themselves when there are none) and the
    accuracy / FPR / FNR at that threshold."""
    results = {}
    for modality, test in test_scores.items():
        given = (thresholds or {}).get(modality)
        val = (val_scores or {}).get(modality, {})
        if "unsafe" not in test:
            if given is not None:
                results[modality] = {"threshold": float(given), "threshold_from": "given"}
            continue
        result: dict[str, Any] = {"test_auc": round(roc_auc(test["safe"], test["unsafe"]), 6)}
        if "unsafe" in val:
            result["val_auc"] = round(roc_auc(val["safe"], val["unsafe"]), 6)
        if given is not None:
            threshold, source = float(given), "given"
        else:
            calibration = val if "unsafe" in val else test
            threshold = calibrate_threshold(calibration["safe"], calibration["unsafe"], target_fpr=target_fpr)
            source = "val" if calibration is val else "test"
        result.update(threshold=threshold, threshold_from=source,
                      test=threshold_metrics(test["safe"], test["unsafe"], threshold).to_dict())
        if "unsafe" in val:
            result["val"] = threshold_metrics(val["safe"], val["unsafe"], threshold).to_dict()
        fpr, tpr, _ = roc_curve(test["safe"], test["unsafe"])
        result["roc"] = {"fpr": [round(float(x), 5) for x in fpr], "tpr": [round(float(y), 5) for y in tpr]}
        results[modality] = result
    return results


def deployment_metrics(base: EmbeddingSet, safe: EmbeddingSet, *, thresholds: dict[str, float] | None = None,
                       ks: Sequence[int] = DEPLOYMENT_KS,
                       similarity: Similarity = cosine) -> dict[str, dict[str, dict[str, Any]]]:
    """``{mode: {direction: metrics}}`` for the four deployments (see the module docstring).

    ``thresholds`` (``{"images": t, "texts": t}``) enable side-by-side for the direction whose
    gallery has that modality: items with a shift score above ``t`` are hidden from its results.
    """
    thresholds = thresholds or {}
    gallery_scores = shift_scores(base, safe)
    results: dict[str, dict[str, dict[str, Any]]] = {mode: {} for mode in DEPLOYMENTS}
    for direction, gallery_modality in ((TEXT_QUERIES, IMAGES), (IMAGE_QUERIES, TEXTS)):
        runs = [(BASE, base, base, None), (QUERY_SIDE, safe, base, None), (FULL_REINDEX, safe, safe, None)]
        threshold = thresholds.get(gallery_modality)
        if threshold is not None:
            scores = gallery_scores[gallery_modality]
            hidden = np.concatenate([scores["safe"], scores.get("unsafe", np.empty(0))]) > threshold
            runs.append((SIDE_BY_SIDE, safe, base, hidden))
        for mode, query_set, gallery_set, hidden in runs:
            if direction == TEXT_QUERIES:
                args = (query_set.safe_text, query_set.unsafe_text, gallery_set.safe_image, gallery_set.unsafe_image)
            else:
                args = (query_set.safe_image, query_set.unsafe_image, gallery_set.safe_text, gallery_set.unsafe_text)
            results[mode][direction] = direction_metrics(*args, ks=ks, similarity=similarity, hidden=hidden)
            if hidden is not None:
                results[mode][direction]["threshold"] = float(threshold)
    return {mode: directions for mode, directions in results.items() if directions}


def compare_deployments(base: ModelSpec, safe: ModelSpec, data: str | os.PathLike | QuadrupletSet, *,
                        val_data: str | os.PathLike | QuadrupletSet | None = None,
                        image_root: str | os.PathLike | None = None,
                        unsafe_image_root: str | os.PathLike | None = None, skip_bad: bool = False,
                        batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
                        ks: Sequence[int] = DEPLOYMENT_KS, target_fpr: float | None = None,
                        thresholds: dict[str, float] | None = None,
                        min_safe_recall_ratio: float = DEFAULT_MIN_SAFE_RECALL_RATIO,
                        similarity: Similarity = cosine) -> DeploymentReport:
    """Measure base, query-side, full-reindex and side-by-side deployments of ``safe`` over a
    collection embedded with ``base``, on the same data, and recommend the safest.

    Args:
        base, safe: a model source (loaded with :func:`safeclip_sdk.load_model`), a
            ``(source, pretrained)`` pair or a :class:`LoadedModel`; loaded one at a time.
        data: the test quadruplets (a dataset file or a loaded QuadrupletSet).
        val_data: validation quadruplets to calibrate the moderation thresholds on. Without it
            they are calibrated on ``data`` itself (in-sample, said in the report's notes).
        image_root, unsafe_image_root, skip_bad: as for :func:`safeclip_sdk.data.load_dataset`,
            applied to both files.
        target_fpr: calibrate each threshold to flag at most this share of safe validation items
            (e.g. 0.05) instead of maximising balanced accuracy.
        thresholds: fixed ``{"images": t, "texts": t}`` thresholds instead of calibrated ones.
        min_safe_recall_ratio: a mode whose safe-query R@1 in a direction falls below this
            share of the base's is not recommended for it.
    """
    if target_fpr is not None and not 0.0 <= target_fpr <= 1.0:
        raise SafeclipError(f"target FPR {target_fpr:g} is not a fraction between 0 and 1 (5% is 0.05)")
    unknown = set(thresholds or {}) - {IMAGES, TEXTS}
    if unknown:
        raise SafeclipError(f"thresholds for '{sorted(unknown)[0]}': only '{IMAGES}' and '{TEXTS}' have shift scores")
    load = lambda source: source if isinstance(source, QuadrupletSet) else load_dataset(  # noqa: E731
        source, image_root=image_root, unsafe_image_root=unsafe_image_root, skip_bad=skip_bad)
    test_set = load(data)
    val_set = load(val_data) if val_data is not None else None
    device = resolve_device(device) if isinstance(device, str) else device
    embeddings: dict[str, dict[str, EmbeddingSet]] = {}
    sources = {}
    for role, spec in (("base", base), ("safe", safe)):
        model = load_model_spec(spec, device)
        sources[role] = {"source": model.source, "pretrained": model.pretrained}
        embeddings[role] = {split: encode_quadruplets(model, items.items, batch_size=batch_size, device=device,
                                                      num_workers=num_workers, desc=f"encoding {split} ({role})")
                            for split, items in (("test", test_set), ("val", val_set)) if items is not None}
        del model  # freed before the next model loads
    test_scores = shift_scores(embeddings["base"]["test"], embeddings["safe"]["test"])
    val_scores = shift_scores(embeddings["base"]["val"], embeddings["safe"]["val"]) if val_set is not None else None
    moderation = moderation_metrics(test_scores, val_scores, target_fpr=target_fpr, thresholds=thresholds)
    filter_thresholds = {modality: result["threshold"] for modality, result in moderation.items()}
    modes = deployment_metrics(embeddings["base"]["test"], embeddings["safe"]["test"], thresholds=filter_thresholds,
                               ks=ks, similarity=similarity)
    notes = _notes(test_set, val_set, moderation)
    ranking, recommendation = recommend(modes, min_safe_recall_ratio=min_safe_recall_ratio)
    return DeploymentReport(
        dataset=str(test_set.path), val_dataset=str(val_set.path) if val_set is not None else None,
        num_items=len(test_set), text_only=not test_set.has_unsafe_images, base=sources["base"],
        safe=sources["safe"], ks=list(ks), similarity=getattr(similarity, "__name__", type(similarity).__name__),
        calibration={"rule": TARGET_FPR if target_fpr is not None else BALANCED_ACCURACY, "target_fpr": target_fpr},
        modes=modes, moderation=moderation, ranking=ranking, recommendation=recommendation, notes=notes)


def _notes(test_set: QuadrupletSet, val_set: QuadrupletSet | None, moderation: dict[str, dict]) -> list[str]:
    notes = []
    if not test_set.has_unsafe_images:
        notes.append("The test data has no unsafe images: text queries are ranked against the N safe images "
                     "only (no unsafe top-1 or leak), unsafe image queries do not exist, and the image shift "
                     "score cannot be measured.")
    for modality, result in moderation.items():
        if result.get("threshold_from") == "test":
            reason = "no validation data given" if val_set is None else f"the validation data has no unsafe {modality}"
            notes.append(f"The {modality[:-1]} threshold was calibrated on the test data itself ({reason}): "
                         f"the figures at that threshold are optimistic.")
    for data in (test_set, val_set):
        if data is not None and data.bad_rows:
            notes.append(f"{data.path}: {len(data.bad_rows)} bad rows were skipped (first: `{data.bad_rows[0]}`).")
    return notes

