"""OpenVINO export and runtime: real exports of the tiny model (fp32 IR, NNCF int8), run by real
OpenVINO compiled models through the Encoder, against the torch model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import openvino as ov
import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.errors import ExportError, ModelLoadError
from safeclip_sdk.export import load_manifest
from safeclip_sdk.export.openvino import export_openvino
from safeclip_sdk.runtime.category_fit import fit_classifier
from safeclip_sdk.runtime.classify import classify
from safeclip_sdk.runtime.encoder import Encoder, fastest_variant

from category_world import build_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("ov_world"))


@pytest.fixture(scope="module")
def model_dir(world, tiny_model_dir, tmp_path_factory):
    """The tiny model folder with a fitted per-category classifier."""
    folder = tmp_path_factory.mktemp("ov_model") / "model"
    shutil.copytree(tiny_model_dir, folder)
    fit_classifier(folder, world["train"], world["val"], device="cpu")
    return folder


@pytest.fixture(scope="module")
def ov_export(model_dir, world, tmp_path_factory):
    """fp32 + int8 OpenVINO export, shared read-only. An untrained tiny model ranks by near-ties (one
    flipped ranking costs points), so the retrieval allowance is opened here; the gate is tested below."""
    out = tmp_path_factory.mktemp("ov") / "export"
    export_openvino(model_dir, out, calibration_data=world["train"], eval_data=world["val"], calibration_size=48,
                    int8_max_r1_drop=100.0, speed_batch=8)
    return out


@pytest.fixture
def export_copy(ov_export, tmp_path):
    return shutil.copytree(ov_export, tmp_path / "export")


def _inputs(world):
    rows = [json.loads(line) for line in world["test"].read_text().splitlines()]
    texts = [row[column] for row in rows for column in ("safe_text", "unsafe_text")]
    images = [world["test"].parent / row[column] for row in rows for column in ("safe_image", "unsafe_image")]
    return texts, images


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.9999), ("int8", 0.99)])
def test_openvino_encoder_agrees_with_torch(ov_export, model_dir, world, precision, min_cosine):
    texts, images = _inputs(world)
    reference = Encoder.load(model_dir, backend="torch", device="cpu")
    encoder = Encoder.load(ov_export, backend="openvino", precision=precision)

    assert (encoder.backend, encoder.precision, encoder.device) == ("openvino", precision, "cpu")
    assert _cosines(encoder.encode_text(texts), reference.encode_text(texts)).min() >= min_cosine
    assert _cosines(encoder.encode_image(images), reference.encode_image(images)).min() >= min_cosine
    # the classifier exported beside the encoders scores the OpenVINO embeddings like the folder's heads
    embeddings = encoder.encode_text(texts)
    np.testing.assert_allclose(encoder.category_classifier.probabilities(embeddings, "text"),
                               reference.category_classifier.probabilities(embeddings, "text"), atol=1e-5)


def test_batches_split_over_requests_and_concurrent_callers_get_their_own_rows(ov_export, world):
    from concurrent.futures import ThreadPoolExecutor

    texts, _ = _inputs(world)
    encoder = Encoder.load(ov_export, backend="openvino", precision="fp32", batch_size=64)
    one_by_one = np.concatenate([encoder.encode_text([text]) for text in texts])
    odd = len(texts) - 1 if len(texts) % 2 == 0 else len(texts)  # uneven chunks across the requests
    np.testing.assert_allclose(encoder.encode_text(texts[:odd]), one_by_one[:odd], atol=1e-5)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda start: encoder.encode_text(texts[start:start + 7]), range(0, 28, 1)))
    for start, rows in zip(range(0, 28), results):
        np.testing.assert_allclose(rows, one_by_one[start:start + 7], atol=1e-5)


def test_manifest_records_checks_calibration_and_speeds(ov_export, world):
    manifest = load_manifest(ov_export)  # verifies every hash, the .bin weights included
    section = manifest.openvino
    assert section["openvino_version"] == ov.__version__
    assert set(section["variants"]) == {"fp32", "int8"}
    int8 = section["variants"]["int8"]
    assert int8["parity"]["image"]["min_cosine"] >= 0.99 and int8["parity"]["text"]["min_cosine"] >= 0.99
    assert int8["calibration"]["inputs_per_tower"] == {"image": 48, "text": 48}
    assert int8["retrieval"]["data"] == str(world["val"]) and set(int8["retrieval"]["int8"]) == {
        "T->V", "V->T", "T*->V+V*"}
    fp32_weights = (ov_export / section["variants"]["fp32"]["image_encoder"]["weights"]["file"]).stat().st_size
    assert (ov_export / int8["image_encoder"]["weights"]["file"]).stat().st_size < fp32_weights
    rates = manifest.speed["items_per_s"]
    assert set(rates) == {"onnx/fp32", "openvino/fp32", "openvino/int8"} and manifest.speed["batch"] == 8
    assert all(rate > 0 for tower in rates.values() for rate in tower.values())


def test_auto_picks_the_fastest_recorded_variant(export_copy):
    recorded = load_manifest(export_copy).speed["items_per_s"]
    fastest = min(recorded, key=lambda key: 1 / recorded[key]["image"] + 1 / recorded[key]["text"])
    assert "/".join(fastest_variant(export_copy)) == fastest

    def record(rates: dict) -> None:
        path = export_copy / "manifest.json"
        data = json.loads(path.read_text())
        data["speed"]["items_per_s"] = rates
        path.write_text(json.dumps(data))

    record({"onnx/fp32": {"image": 10, "text": 10}, "openvino/fp32": {"image": 20, "text": 20},
            "openvino/int8": {"image": 30, "text": 30}})
    encoder = Encoder.load(export_copy, backend="auto", device="cpu")
    assert (encoder.backend, encoder.precision) == ("openvino", "int8")
    encoder = Encoder.load(export_copy, backend="auto", device="cpu", precision="fp32")
    assert (encoder.backend, encoder.precision) == ("openvino", "fp32")
    # images faster but texts much slower: the time for one of each decides
    record({"onnx/fp32": {"image": 10, "text": 10}, "openvino/fp32": {"image": 12, "text": 2},
            "openvino/int8": {"image": 9, "text": 9}})
    encoder = Encoder.load(export_copy, backend="auto", device="cpu")
    assert (encoder.backend, encoder.precision) == ("onnx", "fp32")


def test_recall_gate_refuses_int8(export_copy, model_dir, world):
    # Impossible on purpose: int8 would have to gain more than 100 R@1 points.
    with pytest.raises(ExportError, match=r"int8 OpenVINO variant not kept: retrieval check failed on .*val\.jsonl: "
                                          r"T->V R@1 fell from \d+\.\d\d \(fp32 OpenVINO\) to \d+\.\d\d \(int8\)"):
        export_openvino(model_dir, export_copy, calibration_data=world["train"], eval_data=world["val"],
                        calibration_size=48, int8_max_r1_drop=-101.0)
    manifest = load_manifest(export_copy)
    assert set(manifest.openvino["variants"]) == {"fp32"}
    assert not list(export_copy.glob("*int8*")) and not list(export_copy.glob(".openvino*"))
    assert fastest_variant(export_copy) != ("openvino", "int8")


def test_hysac_projection_and_classifier_survive(hysac_world, hysac_onnx, tmp_path):
    out = tmp_path / "hysac"
    export_openvino(hysac_onnx, out, int8=False, speed_batch=2, speed_repeats=1)  # from the ONNX export folder
    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / "text_encoder.xml")).get_ops()}
    assert "Sinh" in ops  # exp_map0 is inside the converted graph

    torch_encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    encoder = Encoder.load(out, backend="openvino")
    assert encoder.space == torch_encoder.space and encoder.inference.settings == torch_encoder.inference.settings
    texts = hysac_world["safe_texts"][:3] + hysac_world["unsafe_texts"][:3]
    np.testing.assert_allclose(encoder.space.unsafe_score(encoder.encode_text(texts)),
                               torch_encoder.space.unsafe_score(torch_encoder.encode_text(texts)), rtol=1e-4)
    from_openvino = classify(encoder, texts=texts)
    from_torch = classify(torch_encoder, texts=texts)
    assert [label for label, _ in from_openvino] == [label for label, _ in from_torch]
    np.testing.assert_allclose([s for _, s in from_openvino], [s for _, s in from_torch], rtol=1e-4)


def test_cli_export_then_embed(model_dir, export_copy, tmp_path):
    out = export_copy  # holds these weights: the ONNX encoders are kept, the IR written again
    result = CliRunner().invoke(cli, ["export", str(model_dir), "--openvino", str(out)])
    assert result.exit_code == 0, result.output
    assert "fp32: image_encoder.bin" in result.output and "min cos" in result.output
    assert "openvino/fp32:" in result.output and "onnx/fp32:" in result.output

    texts = tmp_path / "texts.txt"
    texts.write_text("a dog on the grass\na red car in the street\n")
    result = CliRunner().invoke(cli, ["embed", str(out), str(texts), str(tmp_path / "texts.npy"),
                                      "--backend", "openvino", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    expected = Encoder.load(out, backend="openvino").encode_text(["a dog on the grass", "a red car in the street"])
    np.testing.assert_allclose(np.load(tmp_path / "texts.npy"), expected, atol=1e-6)


@pytest.mark.parametrize("arguments, message", [
    (["--hf", "out", "--int8"], "--int8 need --onnx OUT_DIR or --openvino OUT_DIR"),
    (["--onnx", "out", "--int8", "--calibration-data", __file__], "--calibration-data calibrates the OpenVINO"),
    (["--openvino", "out", "--calibration-data", __file__], "used by the int8 check: add --int8"),
    (["--openvino", "out", "--int8"], "calibrated on your data: add --calibration-data and/or --eval-data"),
])
def test_cli_rejects_incomplete_options(tiny_model_dir, arguments, message):
    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_or_bad_files_are_one_line_errors(tiny_model_dir, export_copy, tmp_path):
    with pytest.raises(ExportError, match=r"^the int8 OpenVINO variant is calibrated on your data: pass "
                                          r"calibration_data"):
        export_openvino(tiny_model_dir, tmp_path / "x")
    assert not (tmp_path / "x").exists()

    onnx_only = shutil.copytree(export_copy, tmp_path / "onnx")  # the same folder without its OpenVINO section
    manifest = json.loads((onnx_only / "manifest.json").read_text())
    del manifest["openvino"]
    (onnx_only / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"the export has no OpenVINO variants \(add them with `safeclip export "
                                             r"MODEL --openvino"):
        Encoder.load(onnx_only, backend="openvino")
    with pytest.raises(ModelLoadError, match=r"no fp16 OpenVINO variant in the export \(available: fp32, int8\)"):
        Encoder.load(export_copy, backend="openvino", precision="fp16")
    with pytest.raises(ModelLoadError, match=r"backend 'openvino' runs on the CPU, not on 'cuda'"):
        Encoder.load(export_copy, backend="openvino", device="cuda")

    weights = export_copy / "text_encoder.int8.bin"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(ExportError, match=r"text_encoder\.int8\.bin: sha256 mismatch"):
        Encoder.load(export_copy, backend="openvino", precision="int8")
