"""Encoder and image loading on a real tiny open_clip model, its real ONNX export and onnxruntime."""

import dataclasses
import importlib.util
import io
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from safeclip_sdk.runtime.encoder import Encoder, ImageFailure, _onnx_providers
from safeclip_sdk.errors import DataError, ExportError, ModelLoadError
from safeclip_sdk.export.manifest import file_entry, load_manifest
from safeclip_sdk.data.images import ImageError, load_image, preprocess_image

SIZES = [(64, 64), (120, 80), (37, 90), (257, 129), (16, 24)]
MODES = ["RGB", "RGBA", "L", "CMYK", "P", "I;16"]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: colour gradients, sensor noise and a few filled shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1),
                       128 + 100 * np.sin((x + y) / 7 + seed)], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = (x0, y0, x0 + rng.integers(2, width // 2 + 3), y0 + rng.integers(2, height // 2 + 3))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def in_mode(image: Image.Image, mode: str, seed: int = 0) -> Image.Image:
    if mode == "RGBA":
        alpha = Image.fromarray(np.random.default_rng(seed).integers(0, 256, image.size[::-1], dtype=np.uint8))
        rgba = image.convert("RGBA")
        rgba.putalpha(alpha)
        return rgba
    if mode == "P":
        return image.quantize(colors=32)
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def onnx_export(tiny_model_dir, tmp_path_factory):
    from safeclip_sdk.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx_export")
    export_onnx(str(tiny_model_dir), out, int8=True)
    return out


@pytest.fixture(scope="module")
def torch_encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, backend="torch", batch_size=4)


@pytest.fixture(scope="module")
def onnx_encoder(onnx_export):
    return Encoder.load(onnx_export, backend="onnx", batch_size=4)


# --- preprocessing equals open_clip's eval transform ---

PREPROCESS_VARIANTS = {
    "model": {},
    "shortest-nonsquare": {"size": [48, 80]},
    "longest-fill": {"resize_mode": "longest", "fill_color": 128},
    "squash-bilinear": {"resize_mode": "squash", "interpolation": "bilinear", "size": [80, 48]},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", PREPROCESS_VARIANTS)
def test_preprocess_image_equals_open_clip_transform(tiny_model, variant, mode):
    loaded = dataclasses.replace(tiny_model, preprocess_cfg={**tiny_model.preprocess_cfg,
                                                             **PREPROCESS_VARIANTS[variant]})
    transform = loaded.preprocess
    for seed, (width, height) in enumerate(SIZES):
        image = in_mode(picture(width, height, seed), mode, seed)
        ours = preprocess_image(image, loaded.preprocess_cfg)
        reference = transform(load_image(image)).numpy()  # open_clip on our RGB rendering
        assert ours.shape == reference.shape and ours.dtype == np.float32
        assert np.abs(ours - reference).max() <= 1e-6, f"{variant} {mode} {width}x{height}"


@pytest.mark.parametrize("mode", ["L", "CMYK", "P"])
def test_load_image_converts_opaque_modes_like_pil(mode, tmp_path):
    image = in_mode(picture(40, 30), mode)
    expected = np.asarray(image.convert("RGB"))
    from_pil = load_image(image)
    assert from_pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(from_pil), expected)
    if mode != "CMYK":  # PNG has no CMYK
        np.testing.assert_array_equal(np.asarray(load_image(encoded(image))), expected)


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))               # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6                                        # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())

    for item in (path, path.read_bytes(), Image.open(path)):
        upright = np.asarray(load_image(item)).astype(int)
        assert upright.shape == (40, 20, 3), "width and height swap"
        assert upright[5, 10, 0] > 200 and upright[5, 10, 2] < 60, "the left half is now on top"
        assert upright[35, 10, 2] > 200 and upright[35, 10, 0] < 60


# --- torch and onnxruntime agree ---

def mixed_images(tmp_path):
    path = tmp_path / "photo.png"
    picture(96, 64, seed=1).save(path)
    return [path,
            str(path),
            encoded(picture(50, 120, seed=2), "JPEG", quality=90),
            bytearray(encoded(picture(64, 64, seed=3))),
            in_mode(picture(80, 80, seed=4), "RGBA"),
            in_mode(picture(70, 100, seed=5), "L")]


TEXTS = ["a photo of a cat", "a red car parked on a street", "x", "two people walking on a beach at sunset"]


def test_onnx_fp32_matches_torch(torch_encoder, onnx_encoder, tmp_path):
    assert onnx_encoder.providers == ["CPUExecutionProvider"] and onnx_encoder.embed_dim == 64
    images = mixed_images(tmp_path)
    reference, exported = torch_encoder.encode_image(images), onnx_encoder.encode_image(images)
    assert reference.shape == exported.shape == (len(images), 64) and exported.dtype == np.float32
    np.testing.assert_array_equal(exported[0], exported[1])  # the same file as a Path and as a str
    assert cosines(reference, exported).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)
    reference, exported = torch_encoder.encode_text(TEXTS), onnx_encoder.encode_text(TEXTS)
    assert cosines(reference, exported).min() >= 0.9999


def test_int8_variant_is_close_to_torch(torch_encoder, onnx_export, tmp_path):
    if "int8" not in load_manifest(onnx_export).variants:
        pytest.skip("this export has no int8 variant")
    int8 = Encoder.load(onnx_export, backend="onnx", precision="int8")
    images = mixed_images(tmp_path)
    assert cosines(torch_encoder.encode_image(images), int8.encode_image(images)).min() >= 0.99
    assert cosines(torch_encoder.encode_text(TEXTS), int8.encode_text(TEXTS)).min() >= 0.99


def test_batching_gives_the_same_embeddings(onnx_encoder, torch_encoder, tmp_path):
    images = mixed_images(tmp_path)
    for encoder in (onnx_encoder, torch_encoder):
        one_by_one = np.concatenate([encoder.encode_image([image]) for image in images])
        np.testing.assert_allclose(encoder.encode_image(images, batch_size=4), one_by_one, atol=1e-5)
        np.testing.assert_allclose(encoder.encode_text(TEXTS, batch_size=3),
                                   encoder.encode_text(TEXTS, batch_size=1), atol=1e-5)


# --- bad input: one line naming the item ---

def test_bad_images_raise_one_line_errors(onnx_encoder, tmp_path):
    good = picture(64, 64)
    jpeg = encoded(picture(64, 64), "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    missing = tmp_path / "missing.png"
    cases = [
        (b"definitely not an image", r"bytes\[1\]: not an image or an unsupported format"),
        (b"", r"bytes\[1\]: empty bytes, not an image"),
        (truncated, rf"{truncated}: corrupt or truncated image \(image file is truncated"),
        (Image.new("RGB", (0, 10)), r"image #1: zero-size image \(0x10\)"),
        (missing, rf"{missing}: file not found"),
        (tmp_path, rf"{tmp_path}: is a folder, not an image file"),
        (42, r"image #1: unsupported input type int"),
    ]
    for bad, message in cases:
        with pytest.raises(ImageError, match=f"^{message}") as info:
            onnx_encoder.encode_image([good, bad])
        assert "\n" not in str(info.value)


def test_decompression_bomb_is_refused_from_the_header():
    # a 3000x3000 PNG cut right after its header: decoding it would fail as "truncated"
    header_only = encoded(Image.new("L", (3000, 3000)))[:64]
    with pytest.raises(ImageError, match=r"^bytes: image too large: 3000x3000 = 9000000 pixels exceeds "
                                         r"max_pixels=1000000"):
        load_image(header_only, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="truncated"):
        load_image(header_only)


def test_encode_image_batch_keeps_the_good_items(onnx_encoder, tmp_path):
    first, second = tmp_path / "first.png", picture(64, 48, seed=7)
    picture(64, 64, seed=6).save(first)
    missing = tmp_path / "gone.jpg"
    result = onnx_encoder.encode_image_batch([first, b"\x00junk", second, missing], batch_size=2)
    assert result.indices == [0, 2]
    assert result.failures == [ImageFailure(1, "bytes[1]", "not an image or an unsupported format"),
                               ImageFailure(3, str(missing), "file not found")]
    np.testing.assert_allclose(result.embeddings, onnx_encoder.encode_image([first, second]), atol=1e-6)


def test_texts_empty_and_truncated(onnx_encoder, caplog):
    with pytest.raises(DataError, match=r"^text #1: empty text$"):
        onnx_encoder.encode_text(["fine", "   "])
    long_text = "a very long caption about many different things " * 6
    with caplog.at_level(logging.WARNING, logger="safeclip_sdk.runtime.encoder"):
        embeddings = onnx_encoder.encode_text(["short", long_text, long_text + "!", long_text + "?"], batch_size=2)
    assert [record.getMessage() for record in caplog.records] == ["3 texts longer than 32 tokens were truncated"]
    # truncation keeps the first 31 tokens, so the three long texts become the same sequence
    np.testing.assert_allclose(embeddings[1], embeddings[3], atol=1e-6)


def test_hf_tokenizer_named_in_the_manifest(onnx_export, tmp_path, caplog):
    from safeclip_sdk._utils.compat import ensure_torchvision

    ensure_torchvision()
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"a photo of the dog cat red car on street".split()]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(tmp_path / "tokenizer")
    copy = shutil.copytree(onnx_export, tmp_path / "export")
    manifest = load_manifest(copy)
    manifest.text["tokenizer"] = f"hf:{tmp_path / 'tokenizer'}"
    manifest.save(copy)

    encoder = Encoder.load(copy, backend="onnx")
    long_text = "a red car on the street " * 6        # 36 words + [CLS] and [SEP] > 32 tokens
    with caplog.at_level(logging.WARNING, logger="safeclip_sdk.runtime.encoder"):
        embeddings = encoder.encode_text(["a photo of the dog", long_text, long_text + "cat dog"])
    assert [record.getMessage() for record in caplog.records] == ["2 texts longer than 32 tokens were truncated"]
    np.testing.assert_allclose(embeddings[1], embeddings[2], atol=1e-6)
    assert cosines(embeddings[:1], embeddings[1:2])[0] < 0.9999


def test_tampered_onnx_file_is_refused(onnx_export, tmp_path):
    copy = shutil.copytree(onnx_export, tmp_path / "export")
    model_file = copy / "image_encoder.onnx"
    data = bytearray(model_file.read_bytes())
    data[-10] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="image_encoder.onnx: sha256 mismatch") as info:
        Encoder.load(copy, backend="onnx")
    assert "\n" not in str(info.value)


# --- backend and device choices ---

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a host without a GPU")
def test_gpu_providers_only_with_a_gpu(onnx_export, tiny_model_dir):
    installed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _onnx_providers("auto", installed) == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="device 'cuda' requested but onnxruntime has no usable GPU provider"):
        Encoder.load(onnx_export, backend="onnx", device="cuda")
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        Encoder.load(tiny_model_dir, backend="torch", precision="fp16")


def test_unknown_variant_and_precision(onnx_export, tiny_model_dir):
    variants = ", ".join(load_manifest(onnx_export).variants)
    if "fp16" not in variants:
        with pytest.raises(ModelLoadError, match=f"no fp16 variant in the export \\(available: {variants}\\)"):
            Encoder.load(onnx_export, backend="onnx", precision="fp16")
    with pytest.raises(ModelLoadError, match="int8 needs an ONNX export"):
        Encoder.load(tiny_model_dir, backend="torch", precision="int8")
    with pytest.raises(ModelLoadError, match="unknown backend 'jax'"):
        Encoder.load(tiny_model_dir, backend="jax")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_what_to_install(onnx_export, tmp_path):
    copy = shutil.copytree(onnx_export, tmp_path / "export")
    with pytest.raises(ModelLoadError, match="has no TensorRT engines"):
        Encoder.load(copy, backend="tensorrt")
    manifest = load_manifest(copy)
    for name in ("image_encoder", "text_encoder"):
        (copy / f"{name}.plan").write_bytes(b"engine bytes")
    manifest.tensorrt = {name: file_entry(copy / f"{name}.plan") for name in ("image_encoder", "text_encoder")}
    manifest.save(copy)
    with pytest.raises(ModelLoadError, match=r"needs NVIDIA TensorRT's Python package \(pip install tensorrt"):
        Encoder.load(copy, backend="tensorrt")


def test_model_only_methods_match_the_full_path(tiny_model_dir):
    encoder = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    image = Image.new("RGB", (80, 64), (200, 30, 30))
    pixels = preprocess_image(image, encoder.image_cfg)[None]
    np.testing.assert_allclose(encoder.encode_pixels(pixels), encoder.encode_image([image]), atol=1e-6)
    ids = np.asarray(encoder.tokenizer(["a red car"], context_length=encoder.context_length), dtype=np.int64)
    np.testing.assert_allclose(encoder.encode_input_ids(ids), encoder.encode_text(["a red car"]), atol=1e-6)
