"""``safeclip classify fit``: a per-category classifier on a model's embeddings, fitted with
scikit-learn on a training file and calibrated on a validation file.

>>> fit_classifier("runs/safe-clip/model", "train.jsonl", "val.jsonl", plot_path="reliability.png")

For texts, and for images when every row of both files has an unsafe image:

1. the model embeds the safe and unsafe captions (pictures) of each row: the safe ones are the
   class ``safe``, the unsafe ones the class of their row's ``category``;
2. the features are standardised and scikit-learn's ``LogisticRegression`` (multinomial, lbfgs)
   is fitted for each strength in :data:`REGULARISATION`; the one with the lowest log loss on the
   validation file is kept;
3. temperature scaling: one number dividing the logits, chosen by scipy to minimise the
   validation log loss; the reliability of the probabilities before and after is reported;
4. the standardisation and the temperature are folded into one weight matrix and bias (the
   stored head is ``softmax(x @ weight.T + bias)``, see ``safeclip_sdk.model.category_classifier``);
5. each category's threshold is chosen on the validation probabilities for the target precision
   (default :data:`DEFAULT_TARGET`) or recall (``safeclip_sdk.metrics.category_calibration``).

Every input is checked, and everything computed, before the model folder is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.files import atomic_write_text
from ..data.loading import load_dataset
from ..data.quadruplets import QuadrupletSet
from ..errors import SafeclipError
from ..metrics import category_calibration as calibration
from ..metrics.moderation import roc_auc
from ..model.category_classifier import (FORMAT, FORMAT_VERSION, SAFE_CLASS, LinearHeads, save_folder_classifier)
from ..model.folder import METADATA_FILE
from .encoder import Encoder

#: what the thresholds aim at unless the user says otherwise (docs/moderation.md says why)
DEFAULT_TARGET = (calibration.PRECISION, 0.9)
#: inverse regularisation strengths tried (scikit-learn's C), on standardised features
REGULARISATION = (0.01, 0.1, 1.0, 10.0)
#: category names a data file may not use: the safe class, and the method's own unsafe verdict
RESERVED = (SAFE_CLASS, "unsafe")
MAX_ITERATIONS = 5000


def fit_classifier(model_dir: str | os.PathLike, data, val_data, *, target_precision: float | None = None,
                   target_recall: float | None = None, image_root: str | os.PathLike | None = None,
                   skip_bad: bool = False, plot_path: str | os.PathLike | None = None,
                   json_path: str | os.PathLike | None = None, device: str = "auto",
                   batch_size: int = 32) -> dict[str, Any]:
    """Fit, calibrate and store a per-category classifier in a model folder.

    Args:
        model_dir: a safeclip model folder (any method, base models included).
        data, val_data: quadruplet files (or loaded ``QuadrupletSet``) whose rows all have a
            ``category``; the validation file has every category of the training file and no other.
        target_precision, target_recall: what each category's threshold aims at (one of them;
            default: precision 0.9).
        image_root, skip_bad: as for ``safeclip_sdk.data.load_dataset``, for both files.
        plot_path: the reliability curves (before and after temperature scaling) as a PNG.
        json_path: the whole report as JSON.

    Returns:
        The report: ``{"classes", "target", "modalities": {modality: {...}}, "data", "val_data"}``.

    Raises:
        SafeclipError: one line naming the file, row or category that is wrong; nothing is written.
    """
    target = _target(target_precision, target_recall)
    folder = Path(str(model_dir).removeprefix("local-dir:")).expanduser()
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        raise SafeclipError(f"{folder}: not a safeclip model folder (no {METADATA_FILE}); the classifier is "
                            f"stored there")
    train = _dataset(data, image_root, skip_bad)
    val = _dataset(val_data, image_root, skip_bad)
    classes = classes_of(train, val)
    _require_scikit_learn()
    encoder = Encoder.load(folder, backend="torch", device=device, batch_size=batch_size)
    modalities = ["text", "image"] if train.has_unsafe_images and val.has_unsafe_images else ["text"]

    weights, reports = {}, {}
    for modality in modalities:
        train_x, train_y = labelled_embeddings(encoder, train, classes, modality)
        val_x, val_y = labelled_embeddings(encoder, val, classes, modality)
        weights[modality], reports[modality] = fit_head(train_x, train_y, val_x, val_y, classes, target)
    report = {"classes": classes, "target": {"kind": target[0], "value": target[1]},
              "data": str(train.path), "val_data": str(val.path), "modalities": reports}
    weights_sha256 = (json.loads(metadata_path.read_text(encoding="utf-8")).get("weights") or {}).get("sha256")
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "classes": classes,
                "modalities": {modality: {"thresholds": {category: entry["threshold"]
                                                         for category, entry in found["categories"].items()},
                                          "regularization": found["regularization"],
                                          "temperature": found["temperature"]}
                               for modality, found in reports.items()},
                "target": report["target"],
                "fitted_on": {"data": report["data"], "val_data": report["val_data"], "weights_sha256": weights_sha256},
                "report": reports}
    save_folder_classifier(folder, settings, weights)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(json_path), json.dumps(report, indent=2) + "\n")
    if plot_path is not None:
        from .._utils.reliability_plot import draw_reliability

        draw_reliability({modality: entry["reliability"] for modality, entry in reports.items()}, plot_path)
    return report


def _target(target_precision: float | None, target_recall: float | None) -> tuple[str, float]:
    if target_precision is not None and target_recall is not None:
        raise SafeclipError("give a target precision or a target recall, not both")
    if target_precision is not None:
        target = (calibration.PRECISION, target_precision)
    elif target_recall is not None:
        target = (calibration.RECALL, target_recall)
    else:
        target = DEFAULT_TARGET
    calibration.check_target(*target)
    return target


def _dataset(data, image_root, skip_bad: bool) -> QuadrupletSet:
    return data if isinstance(data, QuadrupletSet) else load_dataset(data, image_root=image_root, skip_bad=skip_bad)


def classes_of(train: QuadrupletSet, val: QuadrupletSet) -> list[str]:
    """``["safe", *the training file's categories (sorted)]``, after checking both files' labels."""
    for dataset in (train, val):
        for item in dataset.items:
            if item.category is None:
                raise SafeclipError(f"{item.source}: no category (every row needs one to fit a per-category "
                                    f"classifier)")
            if item.category in RESERVED:
                raise SafeclipError(f"{item.source}: the category '{item.category}' is reserved (the names "
                                    f"{' and '.join(RESERVED)} are the classifier's own); rename it")
    categories = sorted({item.category for item in train.items})
    if len(categories) < 2:
        raise SafeclipError(f"{train.path}: every row has the category '{categories[0]}'; a per-category classifier "
                            f"needs two or more categories")
    for item in val.items:
        if item.category not in categories:
            raise SafeclipError(f"{item.source}: the category '{item.category}' is not one of the categories of "
                                f"{train.path} ({', '.join(categories)})")
    missing = [category for category in categories if all(item.category != category for item in val.items)]
    if missing:
        raise SafeclipError(f"{val.path}: no row of the category '{missing[0]}', so its threshold cannot be "
                            f"calibrated (the validation file needs every category of {train.path})")
    return [SAFE_CLASS, *categories]


def labelled_embeddings(encoder, dataset: QuadrupletSet, classes: Sequence[str],
                        modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every row's safe and unsafe caption (or picture), and their class indices."""
    items = dataset.items
    if modality == "text":
        embeddings = encoder.encode_text([item.safe_text for item in items] + [item.unsafe_text for item in items])
    else:
        embeddings = encoder.encode_image([item.safe_image for item in items] + [item.unsafe_image for item in items])
    labels = np.array([0] * len(items) + [classes.index(item.category) for item in items])
    return embeddings, labels


def fit_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
             classes: Sequence[str], target: tuple[str, float]) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """One modality's head ``(weight, bias)`` and its report (see the module docstring)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_z, val_z = scaler.transform(train_x), scaler.transform(val_x)
    labels = list(range(len(classes)))
    fits = []
    for strength in REGULARISATION:
        model = LogisticRegression(C=strength, max_iter=MAX_ITERATIONS).fit(train_z, train_y)
        fits.append((log_loss(val_y, model.predict_proba(val_z), labels=labels), strength, model))
    loss_before, strength, model = min(fits, key=lambda fit: fit[0])
    weight = model.coef_ / scaler.scale_
    bias = model.intercept_ - weight @ scaler.mean_
    logits = val_x.astype(np.float64) @ weight.T + bias

    def loss_at(log_temperature: float) -> float:
        return float(-log_softmax(logits / np.exp(log_temperature), axis=1)[np.arange(len(val_y)), val_y].mean())

    temperature = float(np.exp(minimize_scalar(loss_at, bounds=(-4.0, 4.0), method="bounded").x))
    weight, bias = weight / temperature, bias / temperature
    before = np.exp(log_softmax(logits, axis=1))
    after = LinearHeads({"head": (weight, bias)}).probabilities(val_x, "head")
    outcomes = np.eye(len(classes))[val_y]
    report = {"train_items": int(len(train_y)), "val_items": int(len(val_y)), "regularization": strength,
              "temperature": temperature,
              "val_log_loss": {"before": float(loss_before), "after": loss_at(np.log(temperature))},
              "reliability": {"before": calibration.reliability(before, outcomes),
                              "after": calibration.reliability(after, outcomes)},
              "unsafe_auc": roc_auc(1.0 - after[val_y == 0, 0], 1.0 - after[val_y != 0, 0]),
              "categories": {}}
    for index, category in enumerate(classes[1:], start=1):
        positives = val_y == index
        scores = after[:, index]
        report["categories"][category] = {
            "auc": calibration.category_auc(scores, positives),
            "auc_vs_safe": roc_auc(scores[val_y == 0], scores[positives]),
            **calibration.threshold_for_target(scores, positives, *target)}
    return (weight.astype(np.float32), bias.astype(np.float32)), report


def _require_scikit_learn() -> None:
    try:
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as error:
        raise SafeclipError(f"safeclip classify fit needs {error.name}: pip install 'safeclip[classify]'") from error
