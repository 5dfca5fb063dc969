"""Moderation of texts and images: per-category scores from a fitted classifier, and the safe/unsafe
verdict of a model whose method classifies, with the calibration of its threshold.

:func:`moderate` answers in the shape of OpenAI's moderation endpoint (``flagged``,
``categories``, ``category_scores`` per input) for any model with a per-category classifier
fitted on its embeddings (``safeclip classify fit``, see ``runtime/category_fit.py``). A model
whose method classifies adds its own verdict as the category ``unsafe``, scored by its own unsafe
score (for a hyperbolic model, the distance from the origin, not a probability).

:func:`classify` is the method's verdict alone: an unsafe score per item against a threshold
calibrated on labelled validation data and stored in the model folder (see
``safeclip_sdk.methods.inference``); an item is unsafe when its score lies above the threshold.

>>> moderate("runs/safe-clip/model", texts=["a man holding a knife"])[0].to_dict()
{'modality': 'text', 'input': 'a man holding a knife', 'flagged': True, 'categories': {...}, 'category_scores': {...}}
>>> classify("runs/hysac/model", texts=["a photo of a cat"])
[Classification(label='safe', score=0.41)]
>>> calibrate_model("runs/hysac/model", "data/val.jsonl", plot_path="calib.png")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._utils.files import atomic_write_text
from ..data.images import describe_item
from ..data.loading import load_dataset
from ..errors import SafeclipError
from ..metrics.calibration import OBJECTIVES, calibrate
from ..methods.inference import Inference
from ..model.category_classifier import no_classifier_error
from ..model.folder import METADATA_FILE
from .encoder import Encoder

SAFE_LABEL = "safe"
UNSAFE_LABEL = "unsafe"


class Classification(NamedTuple):
    """One item's verdict: ``label`` ``safe`` or ``unsafe`` and its unsafe ``score``."""

    label: str
    score: float


@dataclass(frozen=True)
class Moderation:
    """One input's moderation, shaped like a result of OpenAI's moderation endpoint.

    ``categories``: whether each category flags the input (its score STRICTLY above the
    category's threshold); ``category_scores``: the calibrated probability of each category (and,
    for a model whose method classifies, its own unsafe score under ``unsafe``); ``flagged``:
    whether any category flags it.
    """

    modality: str
    input: str
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def moderate(model, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None, *,
             thresholds: Mapping[str, float] | None = None, backend: str = "auto", device: str = "auto",
             batch_size: int = 32) -> list[Moderation]:
    """Moderate texts, then images: per category by the model's fitted category classifier, and by
    the model's own unsafe score (category ``unsafe``) when its method classifies.

    Args:
        model: a loaded ``safeclip_sdk.Encoder``, or a model folder or ONNX export (``backend``,
            ``device`` as for ``Encoder.load``) with a fitted category classifier, a method that
            classifies, or both.
        texts, images: what to moderate (images: paths, encoded bytes or PIL images).
        thresholds: ``{category: threshold}`` replacing the calibrated thresholds of those
            categories (``unsafe``: the method's own threshold).

    Returns:
        One :class:`Moderation` per text, then per image, in order.

    Raises:
        SafeclipError: the model has neither classifier, a threshold names an unknown category,
        the category classifier has no head for a modality asked for, or the method's threshold
        was never calibrated.
    """
    texts, images = list(texts or []), list(images or [])
    if not texts and not images:
        raise SafeclipError("nothing to moderate: give texts and/or images")
    encoder = model if hasattr(model, "encode_text") else _load_encoder(model, backend, device, batch_size)
    classifier, method_classifies = encoder.category_classifier, encoder.inference.classifies
    if classifier is None and not method_classifies:
        raise no_classifier_error(str(model) if encoder is not model else encoder.source or "the model")
    overrides = _checked_thresholds(encoder, thresholds)
    results = []
    for modality, items in (("text", texts), ("image", images)):
        if not items:
            continue
        points = encoder.encode_text(items) if modality == "text" else encoder.encode_image(items)
        scores: list[dict[str, float]] = [{} for _ in items]
        limits: dict[str, float] = {}
        if classifier is not None:
            limits = {**classifier.thresholds(modality), **overrides}
            probabilities = classifier.probabilities(points, modality)
            for row in range(len(items)):
                scores[row] = {category: float(probabilities[row, column])
                               for column, category in enumerate(classifier.classes) if column > 0}
        if method_classifies:
            method_threshold = overrides.get(UNSAFE_LABEL, encoder.inference.calibrated_threshold(modality))
            if method_threshold is None and classifier is None:
                method_threshold = encoder.inference.threshold(modality)  # raises: never calibrated
            if method_threshold is not None:
                limits[UNSAFE_LABEL] = method_threshold
                for row, score in enumerate(encoder.inference.unsafe_scores(points)):
                    scores[row][UNSAFE_LABEL] = float(score)
        for row, item in enumerate(items):
            flags = {category: score > limits[category] for category, score in scores[row].items()}
            results.append(Moderation(modality, item if isinstance(item, str) else describe_item(item, row),
                                      any(flags.values()), flags, scores[row]))
    return results


def _checked_thresholds(encoder, thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """The user's ``{category: threshold}`` under the model's names; SafeclipError for a category
    the model does not score or a threshold that is not a finite number."""
    classifier, method_classifies = encoder.category_classifier, encoder.inference.classifies
    known = [*(classifier.categories if classifier is not None else []), *([UNSAFE_LABEL] if method_classifies else [])]
    checked = {}
    for name, threshold in (thresholds or {}).items():
        if name == UNSAFE_LABEL and method_classifies:
            category = UNSAFE_LABEL
        elif classifier is not None and name != UNSAFE_LABEL:
            category = classifier.checked_category(name)
        else:
            raise SafeclipError(f"category '{name}' is not one of the model's categories ({', '.join(known)})")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise SafeclipError(f"the threshold of category '{name}' must be a finite number, got {threshold!r}")
        checked[category] = float(threshold)
    return checked


def classify(model, texts: Sequence[str] | None = None, images: Sequence[Any] | None = None, *,
             threshold: float | None = None, backend: str = "auto", device: str = "auto",
             batch_size: int = 32) -> list[Classification]:
    """Classify texts, then images, as safe or unsafe by the model's unsafe score.

    Args:
        model: a loaded ``safeclip_sdk.Encoder``, or a model folder or ONNX export of a method
            that classifies, to load one from (``backend``, ``device`` as for ``Encoder.load``).
        texts, images: what to classify (images: paths, encoded bytes or PIL images).
        threshold: classify with this threshold instead of the calibrated one.

    Returns:
        One :class:`Classification` per text, then per image, in order.

    Raises:
        SafeclipError: the model has no classifier (its method does not classify) or no threshold.
    """
    texts, images = list(texts or []), list(images or [])
    if not texts and not images:
        raise SafeclipError("nothing to classify: give texts and/or images")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise SafeclipError(f"threshold must be a finite number, got {threshold!r}")
    encoder = model if hasattr(model, "encode_text") else _load_encoder(model, backend, device, batch_size)
    inference = classifier_of(encoder)
    results = []
    for modality, items in (("text", texts), ("image", images)):
        if not items:
            continue
        points = encoder.encode_text(items) if modality == "text" else encoder.encode_image(items)
        scores = inference.unsafe_scores(points)
        limit = threshold if threshold is not None else inference.threshold(modality)
        results += [Classification(UNSAFE_LABEL if score > limit else SAFE_LABEL, float(score)) for score in scores]
    return results


def classifier_of(encoder: Encoder) -> Inference:
    """The encoder's :class:`~safeclip_sdk.methods.inference.Inference`; SafeclipError for a model
    without an unsafe classifier."""
    if not encoder.inference.classifies:
        raise encoder.inference.no_classifier()
    return encoder.inference


def calibrate_model(model_dir: str | os.PathLike, data, *, image_root: str | os.PathLike | None = None,
                    unsafe_image_root: str | os.PathLike | None = None, skip_bad: bool = False,
                    objective: str = "balanced_accuracy", plot_path: str | os.PathLike | None = None,
                    json_path: str | os.PathLike | None = None, device: str = "auto",
                    batch_size: int = 32) -> dict[str, Any]:
    """Recalibrate the threshold of a model folder whose method classifies, on labelled quadruplets.

    The safe and unsafe texts (and images, when every quadruplet has an unsafe one) are
    embedded, their unsafe scores calibrated together and per modality; the method writes both
    into its keys of the folder's ``safeclip.json`` (atomically, the other keys kept).
    ``plot_path`` gets the calibration curve (ROC and accuracy against threshold) as a PNG,
    ``json_path`` the whole report.

    Returns:
        ``{"calibration": ..., "calibration_modality": {...}, "data": ..., "quadruplets": N}``.
    """
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
                            f"score to calibrate (calibration needs a model trained by a method that classifies)")
    dataset = data if hasattr(data, "items") else load_dataset(data, image_root=image_root,
                                                               unsafe_image_root=unsafe_image_root, skip_bad=skip_bad)
    scores = labelled_scores(encoder, dataset.items)
    safe = np.concatenate([pair[0] for pair in scores.values()])
    unsafe = np.concatenate([pair[1] for pair in scores.values()])
    report = {"data": str(getattr(dataset, "path", "")), "quadruplets": len(dataset.items),
              "calibration": {**calibrate(safe, unsafe, objective=objective), "modalities": list(scores)},
              "calibration_modality": {modality: calibrate(s, u, objective=objective)
                                       for modality, (s, u) in scores.items()}}

    metadata = encoder.inference.recalibrated(json.loads(metadata_path.read_text(encoding="utf-8")), report)
    atomic_write_text(metadata_path, json.dumps(metadata, indent=2, default=str))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(json_path), json.dumps(report, indent=2) + "\n")
    if plot_path is not None:
        from .._utils.calibration_plot import draw_calibration

        draw_calibration(report, plot_path)
    return report


def labelled_scores(encoder, items) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"text": (safe, unsafe), "image": (safe, unsafe)?}`` unsafe scores; images only when every
    quadruplet has an unsafe image."""
    if not items:
        raise SafeclipError("no quadruplets to calibrate on")
    score = encoder.inference.unsafe_scores
    scores = {"text": (score(encoder.encode_text([item.safe_text for item in items])),
                       score(encoder.encode_text([item.unsafe_text for item in items])))}
    if all(item.unsafe_image is not None for item in items):
        scores["image"] = (score(encoder.encode_image([item.safe_image for item in items])),
                           score(encoder.encode_image([item.unsafe_image for item in items])))
    return scores


def _load_encoder(model, backend: str, device: str, batch_size: int) -> Encoder:
    return Encoder.load(model, backend=backend, device=device, batch_size=batch_size)
