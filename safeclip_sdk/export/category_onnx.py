"""The per-category classifier of a model folder as small ONNX graphs beside the encoders.

One graph per modality maps ``embeddings`` float32 [B, D] (what that modality's encoder outputs)
to ``category_scores`` float32 [B, C]: ``Softmax(MatMul(embeddings, weight.T) + bias)``, the
stored head of ``safeclip_sdk.model.category_classifier``. Each graph is checked with onnxruntime
against the stored head before it is kept, and the classifier's settings (classes, thresholds)
are copied beside it. The manifest's ``category_classifier`` entry names the files and hashes::

    "category_classifier": {
      "input": "embeddings", "output": "category_scores",
      "settings": {"file": "category_classifier.json", "sha256": "..."},
      "heads": {"text": {"file": "category_classifier.text.onnx", "sha256": "..."}, "image": {...}},
      "parity": {"text": {"max_abs_diff": ..., "max_abs_diff_allowed": 1e-05}, ...}
    }
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.files import atomic_write, atomic_write_text
from ..errors import ExportError
from ..model.category_classifier import SETTINGS_FILE, CategoryClassifier, LinearHeads, load_folder_classifier
from ..model.folder import LoadedModel
from .manifest import file_entry

INPUT_NAME = "embeddings"
OUTPUT_NAME = "category_scores"
GRAPH_OPSET = 17
GRAPH_IR_VERSION = 9  # read by every onnxruntime from 1.15 on
MAX_ABS_DIFF = 1e-5
PARITY_ROWS = 64


def head_file(modality: str) -> str:
    return f"category_classifier.{modality}.onnx"


def folder_classifier(loaded: LoadedModel) -> CategoryClassifier | None:
    """The classifier of the model folder ``loaded`` came from, or None (no folder, or none fitted)."""
    folder = Path(os.fspath(loaded.source).removeprefix("local-dir:")).expanduser()
    return load_folder_classifier(folder, loaded.metadata) if folder.is_dir() else None


def export_category_classifier(loaded: LoadedModel, out: Path) -> dict[str, Any] | None:
    """Write the classifier's graphs and settings into the export folder ``out``; its manifest
    entry, or None when the model has no classifier."""
    classifier = folder_classifier(loaded)
    if classifier is None:
        return None
    heads: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    for modality in classifier.modalities:
        weight, bias = classifier.heads.weights[modality]
        path = out / head_file(modality)
        atomic_write(path, lambda tmp, w=weight, b=bias: _save_graph(w, b, tmp))
        parity[modality] = _check_parity(path, classifier, modality)
        heads[modality] = file_entry(path)
    atomic_write_text(out / SETTINGS_FILE, json.dumps(classifier.settings, indent=2) + "\n")
    return {"input": INPUT_NAME, "output": OUTPUT_NAME, "settings": file_entry(out / SETTINGS_FILE),
            "heads": heads, "parity": parity}


def _save_graph(weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes, dim = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT_NAME, "weight_t"], ["logits_no_bias"]),
         helper.make_node("Add", ["logits_no_bias", "bias"], ["logits"]),
         helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1)],
        "category_classifier",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), "weight_t"),
                     numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GRAPH_OPSET)],
                              ir_version=GRAPH_IR_VERSION, producer_name="safeclip")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _check_parity(path: Path, classifier: CategoryClassifier, modality: str) -> dict[str, Any]:
    """Random embeddings (unit rows and larger ones) scored by the graph and by the stored head."""
    import onnxruntime as ort

    weight, _ = classifier.heads.weights[modality]
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(PARITY_ROWS, weight.shape[1])).astype(np.float32)
    embeddings[: PARITY_ROWS // 2] /= np.linalg.norm(embeddings[: PARITY_ROWS // 2], axis=1, keepdims=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: embeddings})[0]
    expected = LinearHeads(classifier.heads.weights).probabilities(embeddings, modality)
    difference = float(np.abs(actual.astype(np.float64) - expected).max())
    if not difference <= MAX_ABS_DIFF:
        raise ExportError(f"{path.name}: parity check failed: a category score differs from the stored classifier "
                          f"by {difference:.2e}, above the allowed {MAX_ABS_DIFF:.0e}")
    return {"max_abs_diff": difference, "max_abs_diff_allowed": MAX_ABS_DIFF, "rows": PARITY_ROWS}
