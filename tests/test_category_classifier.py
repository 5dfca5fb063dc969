"""The per-category classifier: `safeclip classify fit` on a tiny model and a small world, stored
hashed in the model folder, exported with ONNX, and the same OpenAI-shaped answers from the CLI,
the Python call on the model folder (torch) and an ONNX-only Encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk._utils.files import file_sha256
from safeclip_sdk.cli.main import cli
from safeclip_sdk.data import load_dataset
from safeclip_sdk.errors import ExportError, ModelLoadError, SafeclipError
from safeclip_sdk.export import export_onnx
from safeclip_sdk.metrics.category_calibration import threshold_for_target
from safeclip_sdk.model.category_classifier import SETTINGS_FILE, WEIGHTS_FILE
from safeclip_sdk.runtime.category_fit import fit_classifier, labelled_embeddings
from safeclip_sdk.runtime.category_onnx import OnnxHeads
from safeclip_sdk.runtime.classify import moderate
from safeclip_sdk.runtime.encoder import Encoder

from category_world import build_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("category_world"))


@pytest.fixture(scope="module")
def fitted(world, tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model folder with a classifier fitted by the CLI, and what the CLI wrote."""
    root = tmp_path_factory.mktemp("fitted")
    folder = root / "model"
    shutil.copytree(tiny_model_dir, folder)
    plot, report = root / "out" / "reliability.png", root / "out" / "report.json"
    result = CliRunner().invoke(cli, ["classify", "fit", str(folder), "--data", str(world["train"]), "--val-data",
                                      str(world["val"]), "--plot", str(plot), "--json", str(report),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return {"folder": folder, "plot": plot, "report": json.loads(report.read_text()), "output": result.output}


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_onnx(fitted["folder"], out)
    return out


def _inputs(world):
    rows = [json.loads(line) for line in world["test"].read_text().splitlines()]
    texts = [row["unsafe_text"] for row in rows[:4]] + [rows[4]["safe_text"]]
    images = [world["test"].parent / row["unsafe_image"] for row in rows[:3]]
    return texts, images


def test_fit_stores_the_classifier_hashed_with_its_report(fitted, world):
    folder, report = fitted["folder"], fitted["report"]
    metadata = json.loads((folder / "safeclip.json").read_text())
    entry = metadata["category_classifier"]
    assert entry["weights"] == {"file": WEIGHTS_FILE, "sha256": file_sha256(folder / WEIGHTS_FILE)}
    assert entry["settings"] == {"file": SETTINGS_FILE, "sha256": file_sha256(folder / SETTINGS_FILE)}
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["classes"] == ["safe", "blood", "drug use", "weapons"] == report["classes"]
    assert settings["fitted_on"]["weights_sha256"] == metadata["weights"]["sha256"]
    assert report["target"] == {"kind": "precision", "value": 0.9}
    assert set(report["modalities"]) == {"text", "image"}
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pickle"))

    # each stored threshold is the target precision's threshold of the stored head's validation scores
    encoder = Encoder.load(folder, backend="torch", device="cpu")
    val = load_dataset(world["val"])
    for modality in ("text", "image"):
        embeddings, labels = labelled_embeddings(encoder, val, settings["classes"], modality)
        probabilities = encoder.category_classifier.probabilities(embeddings, modality)
        for column, category in enumerate(settings["classes"][1:], start=1):
            expected = threshold_for_target(probabilities[:, column], labels == column, "precision", 0.9)
            reported = report["modalities"][modality]["categories"][category]
            assert settings["modalities"][modality]["thresholds"][category] == expected["threshold"]
            assert {key: reported[key] for key in expected} == expected
            assert expected["precision"] >= 0.9 if expected["reached"] else expected["flagged"] == 0
            assert 0.0 <= reported["auc"] <= 1.0
    assert "weapons" in fitted["output"] and "ECE" in fitted["output"]
    with Image.open(fitted["plot"]) as image:
        assert image.format == "PNG" and image.size == (1120, 560)


def test_cli_python_and_onnx_only_encoder_agree(fitted, exported, world):
    texts, images = _inputs(world)
    from_folder = moderate(fitted["folder"], texts=texts, images=images, backend="torch", device="cpu")
    onnx_only = Encoder.load(exported, backend="onnx", device="cpu")
    from_export = moderate(onnx_only, texts=texts, images=images)
    inputs = [*[arg for text in texts for arg in ("--text", text)],
              *[arg for image in images for arg in ("--image", str(image))], "--device", "cpu", "--json"]
    for source, backend, expected in ((fitted["folder"], "torch", from_folder), (exported, "onnx", from_export)):
        result = CliRunner().invoke(cli, ["classify", str(source), *inputs, "--backend", backend])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["results"] == [m.to_dict() for m in expected]
    assert len(from_folder) == len(texts) + len(images)
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["category_classifier"]["heads"]) == {"text", "image"}
    assert isinstance(onnx_only.category_classifier.heads, OnnxHeads)  # the exported graphs answer
    for torch_result, onnx_result in zip(from_folder, from_export):
        assert (onnx_result.modality, onnx_result.input) == (torch_result.modality, torch_result.input)
        assert onnx_result.categories == torch_result.categories
        assert onnx_result.flagged == torch_result.flagged
        assert set(onnx_result.category_scores) == {"blood", "drug use", "weapons"}
        np.testing.assert_allclose([onnx_result.category_scores[c] for c in torch_result.category_scores],
                                   list(torch_result.category_scores.values()), atol=1e-5)
        thresholds = onnx_only.category_classifier.thresholds(torch_result.modality)
        assert torch_result.categories == {c: s > thresholds[c] for c, s in torch_result.category_scores.items()}
        assert torch_result.flagged == any(torch_result.categories.values())

    # a user's threshold for one category replaces the calibrated one, in the CLI as in Python
    lowered = moderate(fitted["folder"], texts=texts, thresholds={"drug_use": -1.0}, backend="torch", device="cpu")
    assert all(m.categories["drug use"] and m.flagged for m in lowered)
    plain = CliRunner().invoke(cli, ["classify", str(fitted["folder"]), "--text", texts[0],
                                     "--threshold", "weapons=-1", "--device", "cpu"])
    assert plain.exit_code == 0 and plain.output.startswith("flagged  ") and "weapons" in plain.output


def test_bad_input_is_one_line_and_writes_nothing(fitted, world, tiny_model_dir, tmp_path):
    texts, _ = _inputs(world)
    unknown = CliRunner().invoke(cli, ["classify", str(fitted["folder"]), "--text", texts[0], "--threshold",
                                       "gore=0.5", "--device", "cpu"])
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines() == [
        "Error: category 'gore' is not one of the classifier's categories (blood, drug use, weapons)"]

    no_classifier = CliRunner().invoke(cli, ["classify", str(tiny_model_dir), "--text", "a cat", "--device", "cpu"])
    assert no_classifier.exit_code == 1
    assert no_classifier.output.strip().splitlines() == [
        f"Error: {tiny_model_dir} has no fitted category classifier: run `safeclip classify fit MODEL --data "
        f"train.jsonl --val-data val.jsonl` first"]

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    rows = [json.loads(line) for line in world["train"].read_text().splitlines()]
    single = world["train"].parent / "single.jsonl"
    single.write_text("".join(json.dumps({**row, "category": "weapons"}) + "\n" for row in rows))
    unlabelled = world["train"].parent / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "category" or i != 2}) + "\n"
                                  for i, row in enumerate(rows)))
    gore = world["train"].parent / "gore.jsonl"
    gore.write_text("".join(json.dumps({**row, "category": "gore" if i == 1 else row["category"]}) + "\n"
                            for i, row in enumerate(rows)))
    cases = [
        (single, world["val"], f"Error: {single}: every row has the category 'weapons'; a per-category classifier "
                               f"needs two or more categories"),
        (unlabelled, world["val"], f"Error: {unlabelled}:3: no category (every row needs one to fit a per-category "
                                   f"classifier)"),
        (world["train"], gore, f"Error: {gore}:2: the category 'gore' is not one of the categories of "
                               f"{world['train']} (blood, drug use, weapons)"),
    ]
    for train, val, message in cases:
        result = CliRunner().invoke(cli, ["classify", "fit", str(folder), "--data", str(train), "--val-data", str(val),
                                          "--device", "cpu"])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [message]
        assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    with pytest.raises(SafeclipError, match="not both"):
        fit_classifier(folder, world["train"], world["val"], target_precision=0.9, target_recall=0.9)


def test_a_changed_classifier_file_is_refused(fitted, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(fitted["folder"], folder)
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    settings["modalities"]["text"]["thresholds"]["weapons"] = 0.0
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(ModelLoadError, match="category_classifier.json: sha256 does not match"):
        Encoder.load(folder, backend="torch", device="cpu")


def test_a_changed_exported_graph_is_refused(exported, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(exported, copy)
    graph = copy / "category_classifier.image.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ExportError, match="category_classifier.image.onnx: sha256 mismatch with manifest.json"):
        Encoder.load(copy, backend="onnx", device="cpu")
