"""ONNX export: real exports of the tiny model, run with real onnxruntime sessions."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk.cli.main import cli
from safeclip_sdk.data import load_dataset
from safeclip_sdk.errors import ExportError
from safeclip_sdk.export import onnx as onnx_export_module
from safeclip_sdk.metrics.retrieval import EmbeddingSet, retrieval_metrics
from safeclip_sdk.export import build_tensorrt_engines, export_onnx, load_manifest
from safeclip_sdk.model.folder import load_model

pytestmark = pytest.mark.slow

CAPTIONS = ["a dog on the grass", "two people at the beach", "a red car in the street", "a cat asleep on a sofa",
            "a boat on the sea at night", "an old house in the snow", "a bird above a tree", "a child with a kite"]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def fp32_export(tiny_model_dir, tmp_path_factory):
    """One fp32 export of the tiny model folder, shared (read-only) by the module: copy it to change it."""
    out = tmp_path_factory.mktemp("onnx") / "export"
    export_onnx(tiny_model_dir, out)
    return out


@pytest.fixture
def export_copy(fp32_export, tmp_path):
    return shutil.copytree(fp32_export, tmp_path / "export")


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """Generic-format JSONL quadruplets with generated PNGs (safe and unsafe images)."""
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(7)
    rows = []
    for index, caption in enumerate(CAPTIONS):
        for kind in ("safe", "unsafe"):
            base = rng.integers(0, 256, size=3)
            pixels = np.clip(base + rng.normal(0, 40, size=(80, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{kind}_{index}.png")
        rows.append({"safe_text": caption, "unsafe_text": f"{caption} covered in blood",
                     "safe_image": f"safe_{index}.png", "unsafe_image": f"unsafe_{index}.png"})
    path = root / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def session(path, options: dict | None = None) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    level = (options or {}).get("graph_optimization_level")
    if level:
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def sample_inputs(loaded, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 64, 64, generator=generator)
    tokens = loaded.tokenizer([CAPTIONS[(seed + i) % len(CAPTIONS)] + f" number {i}" for i in range(batch)])
    return pixels, tokens


def torch_embeddings(loaded, pixels, tokens) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return (loaded.model.encode_image(pixels, normalize=True).numpy(),
                loaded.model.encode_text(tokens, normalize=True).numpy())


@pytest.mark.parametrize("batch", [1, 5])
def test_fp32_encoders_match_torch(fp32_export, reference, batch):
    image, text = session(fp32_export / "image_encoder.onnx"), session(fp32_export / "text_encoder.onnx")
    pixels, tokens = sample_inputs(reference, batch, seed=batch + 100)
    expected_image, expected_text = torch_embeddings(reference, pixels, tokens)

    image_embeds = image.run(["image_embeds"], {"pixel_values": pixels.numpy()})[0]
    text_embeds = text.run(["text_embeds"], {"input_ids": tokens.numpy()})[0]

    assert image_embeds.shape == text_embeds.shape == (batch, 64)
    assert row_cosines(image_embeds, expected_image).min() >= 0.9999
    assert row_cosines(text_embeds, expected_text).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(image_embeds, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_embeds, axis=1), 1.0, atol=1e-5)


def test_encoders_have_a_dynamic_batch_axis(fp32_export):
    image, text = session(fp32_export / "image_encoder.onnx"), session(fp32_export / "text_encoder.onnx")
    (pixel_input,), (id_input,) = image.get_inputs(), text.get_inputs()
    assert (pixel_input.name, pixel_input.type) == ("pixel_values", "tensor(float)")
    assert (id_input.name, id_input.type) == ("input_ids", "tensor(int64)")
    assert isinstance(pixel_input.shape[0], str) and pixel_input.shape[1:] == [3, 64, 64]
    assert isinstance(id_input.shape[0], str) and id_input.shape[1:] == [32]


def test_manifest_describes_the_export(fp32_export, tiny_model_dir, reference):
    raw = json.loads((fp32_export / "manifest.json").read_text())
    manifest = load_manifest(fp32_export)

    assert (raw["format"], raw["format_version"]) == ("safeclip-onnx", 1)
    assert manifest.source_model == str(tiny_model_dir)
    assert manifest.method == "base"  # from the model folder's safeclip.json
    assert manifest.embed_dim == 64
    assert manifest.image["size"] == [64, 64]
    assert manifest.image["mean"] == pytest.approx(reference.preprocess_cfg["mean"])
    assert manifest.image["std"] == pytest.approx(reference.preprocess_cfg["std"])
    assert (manifest.image["input"], manifest.image["output"]) == ("pixel_values", "image_embeds")
    assert manifest.text == {"input": "input_ids", "output": "text_embeds", "tokenizer": "open_clip:simple",
                             "context_length": 32}
    assert list(manifest.variants) == ["fp32"]
    fp32 = manifest.variants["fp32"]
    for encoder in ("image_encoder", "text_encoder"):
        file = fp32_export / fp32[encoder]["file"]
        assert fp32[encoder]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    for tower in ("image", "text"):
        assert fp32["parity"][tower]["min_cosine"] >= 0.9999
        assert fp32["parity"][tower]["max_abs_diff"] < 1e-4
        assert fp32["parity"][tower]["batch_sizes"] == [4, 1]
    assert not list(fp32_export.glob(".*.tmp"))


def test_a_failed_parity_check_leaves_no_encoder_behind(reference, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export_module, "FP32_MIN_COSINE", 1.5)  # no cosine reaches it
    out = tmp_path / "export"

    with pytest.raises(ExportError, match=r"^image_encoder\.onnx: parity check failed: an embedding has cosine "
                                          r"\d\.\d+ with torch fp32, below the required 1\.5$"):
        export_onnx(reference, out)
    assert list(tmp_path.iterdir()) == []  # neither the export folder nor its partial build


def test_changed_or_missing_file_is_named(export_copy):
    text_encoder = export_copy / "text_encoder.onnx"
    data = bytearray(text_encoder.read_bytes())
    data[len(data) // 2] ^= 0xFF
    text_encoder.write_bytes(bytes(data))

    with pytest.raises(ExportError, match=r"text_encoder\.onnx: sha256 mismatch with manifest\.json"):
        load_manifest(export_copy)
    assert load_manifest(export_copy, verify_hashes=False).embed_dim == 64

    (export_copy / "image_encoder.onnx").unlink()
    with pytest.raises(ExportError, match=r"image_encoder\.onnx: listed in manifest\.json but missing"):
        load_manifest(export_copy)


def test_not_an_export_folder_is_reported(tmp_path):
    with pytest.raises(ExportError, match="manifest.json: not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ExportError, match="not a safeclip export manifest"):
        load_manifest(tmp_path)


BAD_MANIFEST_VALUES = [
    ("embed_dim", "64", "'embed_dim' must be a positive integer"),
    ("image.size", [0, 64], "'image.size' must be a positive integer or a list [height, width]"),
    ("image.mean", [0.5, 0.5], "'image.mean' must be a list of 3 numbers, got [0.5, 0.5]"),
    ("image.std", [0.2, 0.0, 0.2], "'image.std' must be a list of 3 positive numbers"),
    ("image.interpolation", "lanczos", "'image.interpolation' must be one of bicubic, bilinear, random"),
    ("image.resize_mode", None, "'image.resize_mode' must be one of shortest, longest, squash"),
    ("image.input", ..., "missing 'image.input'"),
    ("text.context_length", -1, "'text.context_length' must be a positive integer, got -1"),
    ("text.tokenizer", "sentencepiece", "'text.tokenizer' must be \"open_clip:simple\" or \"hf:<tokenizer name>\""),
    ("variants", {}, "'variants' must be an object with at least one variant"),
    ("variants.fp32.text_encoder", ..., "missing 'variants.fp32.text_encoder'"),
    ("variants.fp32.image_encoder.sha256", "abc", "'variants.fp32.image_encoder.sha256' must be a sha256 hex digest"),
    ("variants.fp32.image_encoder.file", "../image_encoder.onnx", "leads outside the export folder"),
    ("variants.fp32.image_encoder.file", "/etc/passwd", "is an absolute path"),
]


@pytest.mark.parametrize("key, value, message", BAD_MANIFEST_VALUES,
                         ids=[f"{key}={value!r}" for key, value, _ in BAD_MANIFEST_VALUES])
def test_every_manifest_key_is_checked_by_name(export_copy, key, value, message):
    path = export_copy / "manifest.json"
    data = json.loads(path.read_text())
    *parents, last = key.split(".")
    section = data
    for part in parents:
        section = section[part]
    if value is ...:
        del section[last]
    else:
        section[last] = value
    path.write_text(json.dumps(data))
    for verify_hashes in (True, False):
        with pytest.raises(ExportError) as info:
            load_manifest(export_copy, verify_hashes=verify_hashes)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)
        assert "\n" not in str(info.value)


def test_a_symlink_leading_outside_the_export_is_refused(export_copy, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "image_encoder.onnx"
    (export_copy / "image_encoder.onnx").rename(outside)
    (export_copy / "image_encoder.onnx").symlink_to(outside)  # same bytes, same hash: only the place is wrong
    for verify_hashes in (True, False):
        with pytest.raises(ExportError, match=r"image_encoder\.onnx: listed in manifest\.json but leads outside "
                                              r"the export folder"):
            load_manifest(export_copy, verify_hashes=verify_hashes)
    inside = export_copy / "encoders"
    inside.mkdir()
    (export_copy / "image_encoder.onnx").unlink()
    outside.rename(inside / "image_encoder.onnx")
    (export_copy / "image_encoder.onnx").symlink_to(inside / "image_encoder.onnx")  # a link within the folder is fine
    assert load_manifest(export_copy).embed_dim == 64


def test_fp16_variant_matches_torch(export_copy, tiny_model_dir, reference):
    fp32_hashes = {k: v["sha256"] for k, v in load_manifest(export_copy).variants["fp32"].items() if k != "parity"}
    export_onnx(tiny_model_dir, export_copy, fp16=True)

    manifest = load_manifest(export_copy)
    fp16 = manifest.variants["fp16"]
    assert {k: v["sha256"] for k, v in manifest.variants["fp32"].items() if k != "parity"} == fp32_hashes
    options = fp16["session_options"]
    pixels, tokens = sample_inputs(reference, 3, seed=5)
    expected_image, expected_text = torch_embeddings(reference, pixels, tokens)
    image = session(export_copy / fp16["image_encoder"]["file"], options).run(None, {"pixel_values": pixels.numpy()})[0]
    text = session(export_copy / fp16["text_encoder"]["file"], options).run(None, {"input_ids": tokens.numpy()})[0]
    assert image.dtype == text.dtype == np.float32
    assert row_cosines(image, expected_image).min() >= 0.999
    assert row_cosines(text, expected_text).min() >= 0.999
    assert fp16["parity"]["image"]["min_cosine"] >= 0.999 and fp16["parity"]["text"]["min_cosine"] >= 0.999


def embed_with_onnx(folder, variant: dict, loaded, items) -> EmbeddingSet:
    image = session(folder / variant["image_encoder"]["file"])
    text = session(folder / variant["text_encoder"]["file"])

    def images(paths):
        pixels = torch.stack([loaded.preprocess(Image.open(path).convert("RGB")) for path in paths]).numpy()
        return image.run(None, {"pixel_values": pixels})[0]

    def texts(captions):
        return text.run(None, {"input_ids": loaded.tokenizer(captions).numpy()})[0]

    return EmbeddingSet(safe_text=texts([item.safe_text for item in items]),
                        unsafe_text=texts([item.unsafe_text for item in items]),
                        safe_image=images([item.safe_image for item in items]),
                        unsafe_image=images([item.unsafe_image for item in items]))


def test_int8_variant_passes_its_checks_then_a_failing_one_is_removed(export_copy, tiny_model_dir, reference,
                                                                      eval_data):
    # An untrained tiny model ranks by near-ties, and one flipped ranking costs 12.5 R@1 points on 8
    # quadruplets, so the allowance is opened here and the recorded R@1 values are recomputed instead.
    export_onnx(tiny_model_dir, export_copy, int8=True, eval_data=eval_data, int8_max_r1_drop=100.0)

    manifest = load_manifest(export_copy)
    assert set(manifest.variants) == {"fp32", "int8"}
    int8 = manifest.variants["int8"]
    assert int8["parity"]["image"]["min_cosine"] >= 0.99 and int8["parity"]["text"]["min_cosine"] >= 0.99
    int8_size = (export_copy / int8["image_encoder"]["file"]).stat().st_size
    assert int8_size < (export_copy / "image_encoder.onnx").stat().st_size
    retrieval = int8["retrieval"]
    assert retrieval["quadruplets"] == len(CAPTIONS)
    items = load_dataset(eval_data).items
    for variant in ("fp32", "int8"):
        metrics = retrieval_metrics(embed_with_onnx(export_copy, manifest.variants[variant], reference, items), ks=(1,))
        assert retrieval[variant] == {direction: pytest.approx(metrics[direction]["R@1"])
                                      for direction in ("T->V", "V->T", "T*->V+V*")}

    with pytest.raises(ExportError, match=r"int8 variant not kept: .*int8\.onnx: parity check failed"):
        export_onnx(tiny_model_dir, export_copy, int8=True, int8_min_cosine=1.0)
    assert set(load_manifest(export_copy).variants) == {"fp32"}
    assert not list(export_copy.glob("*int8*")) and not list(export_copy.glob(".*.tmp"))


def test_int8_retrieval_check_failure_names_the_numbers(export_copy, tiny_model_dir, eval_data):
    # Impossible on purpose: int8 would have to gain more than 100 R@1 points.
    with pytest.raises(ExportError, match=r"retrieval check failed on .*eval\.jsonl: T->V R@1 fell from "
                                          r"\d+\.\d\d \(fp32 ONNX\) to \d+\.\d\d \(int8\)"):
        export_onnx(tiny_model_dir, export_copy, int8=True, eval_data=eval_data, int8_max_r1_drop=-101.0)
    assert set(load_manifest(export_copy).variants) == {"fp32"}
    assert not list(export_copy.glob("*int8*"))


def test_lora_model_is_merged_before_export_and_replaces_other_weights(export_copy, tiny_model, tiny_model_dir):
    from safeclip_sdk._utils.compat import ensure_torchvision

    ensure_torchvision()
    import peft
    from peft.tuners.lora import LoraLayer

    export_onnx(tiny_model_dir, export_copy, fp16=True)  # an export of other weights, with two variants
    torch.manual_seed(1)
    lora = peft.get_peft_model(tiny_model.model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_fc", "c_proj"]))
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)  # peft starts B at zero, which would make the adapters a no-op
    tiny_model.model = lora
    pixels, tokens = sample_inputs(tiny_model, 2, seed=3)
    with torch.no_grad():
        expected_image = lora.encode_image(pixels, normalize=True).numpy()
        expected_text = lora.encode_text(tokens, normalize=True).numpy()

    # a replacement that fails (an impossible int8 threshold) leaves the old export byte for byte
    before = {path.name: path.read_bytes() for path in export_copy.iterdir()}
    with pytest.raises(ExportError, match="still holds the previous export, unchanged"):
        export_onnx(tiny_model, export_copy, int8=True, int8_min_cosine=1.01)
    assert {path.name: path.read_bytes() for path in export_copy.iterdir()} == before
    assert [path.name for path in export_copy.parent.iterdir() if path.name.startswith(".")] == []

    export_onnx(tiny_model, export_copy)

    manifest = load_manifest(export_copy)
    assert list(manifest.variants) == ["fp32"] and not list(export_copy.glob("*fp16*"))
    image = session(export_copy / "image_encoder.onnx").run(None, {"pixel_values": pixels.numpy()})[0]
    text = session(export_copy / "text_encoder.onnx").run(None, {"input_ids": tokens.numpy()})[0]
    assert row_cosines(image, expected_image).min() >= 0.9999
    assert row_cosines(text, expected_text).min() >= 0.9999
    assert any(isinstance(module, LoraLayer) for module in lora.modules())  # merged a copy, not the caller's model
    with torch.no_grad():
        plain_text = load_model(str(tiny_model_dir)).model.encode_text(tokens, normalize=True).numpy()
    assert row_cosines(text, plain_text).min() < 0.99  # the adapters changed the exported weights


@pytest.mark.skipif(HAS_TENSORRT, reason="tests the message shown when TensorRT is missing")
def test_tensorrt_missing_gives_a_clear_error(fp32_export):
    manifest_before = (fp32_export / "manifest.json").read_text()
    with pytest.raises(ExportError) as error:
        build_tensorrt_engines(fp32_export)
    assert str(error.value) == (f"TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and CUDA); "
                                f"ONNX files were written to {fp32_export}")
    assert (fp32_export / "manifest.json").read_text() == manifest_before


def test_tensorrt_engines_are_built_and_recorded(export_copy, tiny_model_dir):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    export_onnx(tiny_model_dir, export_copy, fp16=True)

    engines = build_tensorrt_engines(export_copy, min_batch=1, opt_batch=4, max_batch=8, workspace_gb=1)

    manifest = load_manifest(export_copy)  # verifies the plan hashes
    assert manifest.tensorrt == engines
    assert engines["batch"] == {"min": 1, "opt": 4, "max": 8}
    for encoder in ("image_encoder", "text_encoder"):
        assert (export_copy / f"{encoder}.plan").stat().st_size > 0


def test_cli_adds_a_variant_and_prints_a_summary(export_copy, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--onnx", str(export_copy), "--fp16",
                                      "--hf", str(tmp_path / "hf")])

    assert result.exit_code == 0, result.output
    assert "fp32: image_encoder.onnx" in result.output
    assert "fp16: image_encoder.fp16.onnx" in result.output
    assert "min cos" in result.output
    assert set(load_manifest(export_copy).variants) == {"fp32", "fp16"}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "clip"


@pytest.mark.parametrize("arguments, message", [
    ([], "pass --onnx OUT_DIR and/or --hf OUT_DIR"),
    (["--hf", "out", "--int8"], "--int8 need --onnx OUT_DIR"),
    (["--onnx", "out", "--eval-data", __file__], "used by the int8 check: add --int8"),
])
def test_cli_rejects_incomplete_options(tiny_model_dir, arguments, message):
    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_reports_a_bad_model_folder_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--onnx", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path}: neither an open_clip folder (open_clip_config.json) nor a Hugging Face CLIPModel "
        f"folder (config.json)"]


@pytest.mark.skipif(HAS_TENSORRT, reason="tests the message shown when TensorRT is missing")
def test_cli_tensorrt_without_tensorrt_fails_after_writing_onnx(export_copy, tiny_model_dir):
    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--onnx", str(export_copy), "--tensorrt"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: TensorRT is not installed: pip install tensorrt")
    assert set(load_manifest(export_copy).variants) == {"fp32", "fp16"}
