"""A per-category classifier kept in a model folder: one linear head per modality on the model's
embeddings, the classes it tells apart and each category's threshold.

Two files, written by ``safeclip classify fit`` (``safeclip_sdk.runtime.category_fit``):

- ``category_classifier.safetensors``: ``<modality>.weight`` [C, D] and ``<modality>.bias`` [C]
  (float32) for ``text`` and, when the data had unsafe images, ``image``. The fitted multinomial
  logistic regression with its feature standardisation and its temperature folded in, so that
  ``softmax(x @ weight.T + bias)`` are the calibrated probabilities of the C classes.
- ``category_classifier.json``: ``{"format", "format_version", "classes": ["safe", ...],
  "modalities": {"text": {"thresholds": {category: t}, ...}, ...}, "target", "fitted_on",
  "report"}``; the first class is the safe class, the others are the data's categories.

``safeclip.json`` records both under ``"category_classifier": {"weights": {"file", "sha256"},
"settings": {"file", "sha256"}}``, as it records the model's weights, and loading refuses a file
that changed. An item is flagged in a category when its probability is STRICTLY above the
category's threshold for the item's modality.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .._utils.files import atomic_write, atomic_write_text, file_sha256
from ..data.categories import normalize_category
from ..errors import ModelLoadError, SafeclipError

CLASSIFIER_KEY = "category_classifier"
WEIGHTS_FILE = "category_classifier.safetensors"
SETTINGS_FILE = "category_classifier.json"
FORMAT = "safeclip-category-classifier"
FORMAT_VERSION = 1
SAFE_CLASS = "safe"
MODALITIES = ("text", "image")
FIT_COMMAND = "safeclip classify fit MODEL --data train.jsonl --val-data val.jsonl"


class Heads(Protocol):
    """What computes the class probabilities: the stored weights (numpy) or an exported graph."""

    def probabilities(self, embeddings: np.ndarray, modality: str) -> np.ndarray: ...


class LinearHeads:
    """``softmax(x @ weight.T + bias)`` per modality, in float32 like the exported graph."""

    def __init__(self, weights: Mapping[str, tuple[np.ndarray, np.ndarray]]):
        self.weights = {modality: (np.asarray(weight, dtype=np.float32), np.asarray(bias, dtype=np.float32))
                        for modality, (weight, bias) in weights.items()}

    def probabilities(self, embeddings: np.ndarray, modality: str) -> np.ndarray:
        weight, bias = self.weights[modality]
        logits = np.asarray(embeddings, dtype=np.float32) @ weight.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        exponentials = np.exp(logits)
        return exponentials / exponentials.sum(axis=1, keepdims=True)


class CategoryClassifier:
    """The classes, the thresholds per modality, and the heads that score embeddings."""

    def __init__(self, settings: Mapping[str, Any], heads: Heads, where: str):
        self.settings = check_settings(settings, where)
        self.heads = heads
        self.classes: list[str] = list(self.settings["classes"])

    @property
    def categories(self) -> list[str]:
        """The unsafe categories (every class but the safe one), in the stored order."""
        return self.classes[1:]

    @property
    def modalities(self) -> list[str]:
        return list(self.settings["modalities"])

    def thresholds(self, modality: str) -> dict[str, float]:
        """Each category's threshold for items of ``modality``."""
        self._check_modality(modality)
        return dict(self.settings["modalities"][modality]["thresholds"])

    def probabilities(self, embeddings: np.ndarray, modality: str) -> np.ndarray:
        """Calibrated class probabilities [N, C] (columns in :attr:`classes` order)."""
        self._check_modality(modality)
        return np.asarray(self.heads.probabilities(np.asarray(embeddings, dtype=np.float32), modality),
                          dtype=np.float32)

    def checked_category(self, name: str) -> str:
        """The classifier's name of the category ``name`` (labels are normalised as the data's are);
        SafeclipError naming it when the classifier does not know it."""
        category = normalize_category(name) if str(name).strip() else str(name)
        if category not in self.categories:
            raise SafeclipError(f"category '{name}' is not one of the classifier's categories "
                                f"({', '.join(self.categories)})")
        return category

    def _check_modality(self, modality: str) -> None:
        if modality not in self.settings["modalities"]:
            raise SafeclipError(f"the category classifier has no {modality} head (it was fitted on "
                                f"{' and '.join(self.modalities)} only: fit it on data with unsafe images)")


def check_settings(settings: Any, where: str) -> dict[str, Any]:
    """The classifier's JSON settings, checked; ModelLoadError naming ``where`` and the key."""
    if not isinstance(settings, Mapping) or settings.get("format") != FORMAT:
        raise ModelLoadError(f"{where}: not a category classifier (expected \"format\": \"{FORMAT}\")")
    if settings.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{where}: format_version {settings.get('format_version')!r} is not supported "
                             f"(this safeclip reads version {FORMAT_VERSION})")
    classes = settings.get("classes")
    names_ok = isinstance(classes, list) and all(isinstance(name, str) and name.strip() for name in classes)
    if not names_ok or len(classes) < 3 or classes[0] != SAFE_CLASS or len(set(classes)) != len(classes):
        raise ModelLoadError(f"{where}: 'classes' must list '{SAFE_CLASS}' then two or more distinct categories")
    modalities = settings.get("modalities")
    if not isinstance(modalities, Mapping) or not modalities or not set(modalities) <= set(MODALITIES):
        raise ModelLoadError(f"{where}: 'modalities' must be an object with 'text' and/or 'image'")
    for modality, entry in modalities.items():
        thresholds = entry.get("thresholds") if isinstance(entry, Mapping) else None
        if not isinstance(thresholds, Mapping) or set(thresholds) != set(classes[1:]) or not all(
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                for value in thresholds.values()):
            raise ModelLoadError(f"{where}: 'modalities.{modality}.thresholds' must give every category a finite "
                                 f"threshold")
    return dict(settings)


def load_folder_classifier(folder: str | Path, metadata: Mapping[str, Any]) -> CategoryClassifier | None:
    """The classifier recorded in a model folder's ``safeclip.json``, its files' hashes checked;
    None when the folder has none."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    entry = metadata.get(CLASSIFIER_KEY)
    if entry is None:
        return None
    folder = Path(folder)
    where = f"{folder / 'safeclip.json'}: '{CLASSIFIER_KEY}'"
    if not isinstance(entry, Mapping):
        raise ModelLoadError(f"{where} must be an object")
    weights_path = verified_file(folder, entry.get("weights"), f"{where}.weights")
    settings_path = verified_file(folder, entry.get("settings"), f"{where}.settings")
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{settings_path}: cannot read the classifier's settings ({error})") from error
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(f"{weights_path}: corrupt or truncated safetensors file ({error})") from error
    settings = check_settings(settings, str(settings_path))
    fitted_for = settings.get("fitted_on", {}).get("weights_sha256")
    current = (metadata.get("weights") or {}).get("sha256")
    if fitted_for is not None and current is not None and fitted_for != current:
        raise ModelLoadError(f"{settings_path}: fitted on the embeddings of other weights ({fitted_for[:12]}..., the "
                             f"folder's are {current[:12]}...): run `{FIT_COMMAND}` again")
    weights = {}
    for modality in settings["modalities"]:
        weight, bias = tensors.get(f"{modality}.weight"), tensors.get(f"{modality}.bias")
        if weight is None or bias is None or weight.ndim != 2 or bias.shape != (len(settings["classes"]),) \
                or weight.shape[0] != len(settings["classes"]):
            raise ModelLoadError(f"{weights_path}: '{modality}.weight' [classes, dim] and '{modality}.bias' [classes] "
                                 f"must fit the {len(settings['classes'])} classes of {settings_path.name}")
        weights[modality] = (weight, bias)
    return CategoryClassifier(settings, LinearHeads(weights), str(settings_path))


def verified_file(folder: Path, entry: Any, where: str) -> Path:
    """The file of a ``{"file", "sha256"}`` entry inside ``folder``, present and unchanged."""
    if not (isinstance(entry, Mapping) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)):
        raise ModelLoadError(f"{where} must be {{\"file\": name, \"sha256\": hex digest}}")
    name = entry["file"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelLoadError(f"{where}.file must be a file name inside the folder, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{path}: listed in {where} but missing")
    if file_sha256(path) != entry["sha256"]:
        raise ModelLoadError(f"{path}: sha256 does not match the one recorded in {where} (the file changed after "
                             f"the classifier was fitted)")
    return path


def save_folder_classifier(folder: str | Path, settings: Mapping[str, Any],
                           weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Write the classifier's two files into a model folder and record their hashes in its
    ``safeclip.json`` (every other key kept); each file is written whole and renamed. Returns
    the ``safeclip.json`` entry."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    metadata_path = folder / "safeclip.json"
    check_settings(settings, SETTINGS_FILE)
    tensors = {}
    for modality, (weight, bias) in weights.items():
        tensors[f"{modality}.weight"] = np.ascontiguousarray(weight, dtype=np.float32)
        tensors[f"{modality}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_text(folder / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    entry = {"weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(folder / WEIGHTS_FILE)},
             "settings": {"file": SETTINGS_FILE, "sha256": file_sha256(folder / SETTINGS_FILE)}}
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    atomic_write_text(metadata_path, json.dumps({**metadata, CLASSIFIER_KEY: entry}, indent=2, default=str))
    return entry


def no_classifier_error(model: str) -> SafeclipError:
    """The one-line error for a model without a fitted category classifier."""
    return SafeclipError(f"{model} has no fitted category classifier: run `{FIT_COMMAND}` first")
