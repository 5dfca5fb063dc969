"""Safe/unsafe classification with a HySAC model: the Python call, the CLI and recalibration."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk.runtime.classify import calibrate_model, classify
from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.metrics.calibration import calibrate


def test_classification_separates_the_world_with_the_calibrated_threshold(hysac_world):
    world = hysac_world
    texts = world["safe_texts"] + world["unsafe_texts"]
    images = world["safe_images"] + world["unsafe_images"]
    results = classify(world["folder"], texts=texts, images=images, backend="torch", device="cpu")
    half = len(world["safe_texts"])
    expected = (["safe"] * half + ["unsafe"] * half) * 2
    assert [label for label, _ in results] == expected

    encoder = Encoder.load(world["folder"], backend="torch", device="cpu")
    scores = np.concatenate([encoder.space.unsafe_score(encoder.encode_text(texts)),
                             encoder.space.unsafe_score(encoder.encode_image(images))])
    np.testing.assert_allclose([score for _, score in results], scores, rtol=1e-6)
    # an explicit threshold replaces the calibrated ones: everything beyond the median is unsafe
    median = float(np.median(scores))
    relabelled = classify(encoder, texts=texts, images=images, threshold=median)
    assert [label == "unsafe" for label, _ in relabelled] == list(scores > median)


def test_onnx_export_classifies_like_the_model_folder(hysac_world, hysac_onnx):
    texts = hysac_world["safe_texts"][:2] + hysac_world["unsafe_texts"][:2]
    from_folder = classify(hysac_world["folder"], texts=texts, backend="torch", device="cpu")
    from_export = classify(hysac_onnx, texts=texts, backend="onnx", device="cpu")
    assert [label for label, _ in from_export] == [label for label, _ in from_folder] == ["safe"] * 2 + ["unsafe"] * 2
    np.testing.assert_allclose([s for _, s in from_export], [s for _, s in from_folder], rtol=1e-4)


def test_a_cosine_model_has_no_classifier(tiny_model_dir):
    with pytest.raises(SafeclipError, match="cosine space and has no unsafe classifier"):
        classify(tiny_model_dir, texts=["a cat"], backend="torch", device="cpu")
    result = CliRunner().invoke(cli, ["classify", str(tiny_model_dir), "--text", "a cat"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tiny_model_dir} has no fitted category classifier: run `safeclip classify fit MODEL --data "
        f"train.jsonl --val-data val.jsonl` first"]


def test_cli_classifies_texts_and_images_as_json(hysac_world):
    world = hysac_world
    args = ["classify", str(world["folder"]), "--text", world["unsafe_texts"][0], "--text", world["safe_texts"][0],
            "--image", str(world["unsafe_images"][0]), "--backend", "torch", "--device", "cpu", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["results"]
    # without a fitted category classifier, the method's own verdict is the one category
    assert [(row["modality"], row["flagged"], row["categories"]) for row in rows] == [
        ("text", True, {"unsafe": True}), ("text", False, {"unsafe": False}), ("image", True, {"unsafe": True})]
    assert rows[0]["input"] == world["unsafe_texts"][0] and rows[2]["input"] == str(world["unsafe_images"][0])
    expected = classify(world["folder"], texts=[world["unsafe_texts"][0]], backend="torch", device="cpu")[0].score
    assert rows[0]["category_scores"] == {"unsafe": expected}
    plain = CliRunner().invoke(cli, args[:-1])
    assert plain.exit_code == 0 and plain.output.splitlines()[0].startswith("flagged  unsafe ")
    assert "give at least one --text or --image" in CliRunner().invoke(cli, ["classify", str(world["folder"])]).output


def test_calibrate_rewrites_the_threshold_and_keeps_the_other_keys(hysac_world, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(hysac_world["folder"], folder)
    metadata = json.loads((folder / "safeclip.json").read_text())
    metadata["hysac"]["calibration"]["threshold"] = 100.0  # nothing would be flagged
    metadata["hysac"].pop("calibration_modality")
    (folder / "safeclip.json").write_text(json.dumps(metadata))
    assert {label for label, _ in classify(folder, texts=hysac_world["unsafe_texts"], backend="torch")} == {"safe"}

    plot, report_path = tmp_path / "out" / "calib.png", tmp_path / "out" / "calib.json"
    result = CliRunner().invoke(cli, ["classify", "calibrate", str(folder), "--data", str(hysac_world["data"]),
                                      "--plot", str(plot), "--json", str(report_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[:3]] == ["all", "text", "image"]

    saved = json.loads((folder / "safeclip.json").read_text())
    report = json.loads(report_path.read_text())
    assert {key: value for key, value in saved.items() if key != "hysac"} == \
        {key: value for key, value in metadata.items() if key != "hysac"}  # weights hash, space, method kept
    assert saved["hysac"]["distance_stats"] == metadata["hysac"]["distance_stats"]
    # the stored thresholds are the building block's calibration of the world's distances
    encoder = Encoder.load(folder, backend="torch", device="cpu")
    score = lambda points: encoder.space.unsafe_score(points)  # noqa: E731
    text_safe = score(encoder.encode_text(hysac_world["safe_texts"]))
    text_unsafe = score(encoder.encode_text(hysac_world["unsafe_texts"]))
    assert saved["hysac"]["calibration_modality"]["text"] == report["calibration_modality"]["text"] \
        == calibrate(text_safe, text_unsafe)
    assert saved["hysac"]["calibration"] == report["calibration"]
    assert report["calibration"]["modalities"] == ["text", "image"]
    assert saved["hysac"]["calibrated_on"] == str(hysac_world["data"])
    assert report["calibration_modality"]["text"]["auc"] == 1.0
    assert {label for label, _ in classify(folder, texts=hysac_world["unsafe_texts"], backend="torch")} == {"unsafe"}
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (1120, 560)


def test_calibrate_refuses_a_cosine_model_and_an_export(tiny_model_dir, hysac_world, hysac_onnx):
    before = (tiny_model_dir / "safeclip.json").read_text()
    with pytest.raises(SafeclipError, match="cosine space and has no unsafe score to calibrate"):
        calibrate_model(tiny_model_dir, hysac_world["data"], device="cpu")
    assert (tiny_model_dir / "safeclip.json").read_text() == before
    with pytest.raises(SafeclipError, match="not a safeclip model folder"):
        calibrate_model(hysac_onnx, hysac_world["data"], device="cpu")
