"""The per-category classifier of an ONNX export, run by onnxruntime (``export/category_onnx.py``
writes it): its settings from the export folder, its scores from the exported graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from ..export.manifest import MANIFEST_NAME, Manifest, file_in_export
from ..model.category_classifier import CategoryClassifier


class OnnxHeads:
    """Class probabilities from one exported graph per modality (onnxruntime on the CPU: the graphs are tiny)."""

    def __init__(self, sessions: dict, input_name: str, output_name: str):
        self.sessions = sessions
        self.input_name, self.output_name = input_name, output_name

    def probabilities(self, embeddings: np.ndarray, modality: str) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(embeddings, dtype=np.float32)}
        return self.sessions[modality].run([self.output_name], feed)[0]


def exported_classifier(folder: Path, manifest: Manifest) -> CategoryClassifier | None:
    """The classifier an export carries (its files' hashes were checked with the manifest), or None."""
    entry = manifest.category_classifier
    if not entry:
        return None
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ModelLoadError("the export's category classifier runs on onnxruntime: pip install "
                             "'safeclip[onnx]'") from error
    settings_path = file_in_export(folder, entry["settings"]["file"])
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{settings_path}: cannot read the classifier's settings ({error})") from error
    sessions = {}
    for modality, head in entry["heads"].items():
        path = file_in_export(folder, head["file"])
        try:
            sessions[modality] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0]})") from error
    classifier = CategoryClassifier(settings, OnnxHeads(sessions, entry["input"], entry["output"]),
                                    f"{folder / MANIFEST_NAME}: '{settings_path.name}'")
    if set(classifier.modalities) != set(sessions):
        raise ModelLoadError(f"{folder / MANIFEST_NAME}: 'category_classifier.heads' has graphs for "
                             f"{', '.join(sessions)} but the settings have thresholds for "
                             f"{', '.join(classifier.modalities)}")
    return classifier
