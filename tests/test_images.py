"""One image path: every PIL mode rendered correctly, and training, evaluation and the Encoder
reading the same pixels with the same limits and messages."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip_sdk.data import QuadrupletDataset, load_dataset
from safeclip_sdk.data.torch_dataset import load_image_tensor
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.errors import DataError
from safeclip_sdk.data.images import BACKGROUND, DEFAULT_MAX_PIXELS, ImageError, load_image, preprocess_image, to_rgb


def grey_levels(width: int = 48, height: int = 32) -> np.ndarray:
    """uint8 [H, W]: every level 0..255 appears, plus a diagonal gradient."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 7 + y * 5) % 256).astype(np.uint8)


def colour_pixels(width: int = 48, height: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def alpha_channel(width: int = 48, height: int = 32, seed: int = 1) -> np.ndarray:
    alpha = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    alpha[0, :] = 0      # fully transparent row
    alpha[1, :] = 255    # fully opaque row
    return alpha


def over_background(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The 8-bit rendering of a transparent image: composited onto BACKGROUND."""
    a = alpha[..., None].astype(np.float64) / 255
    return rgb.astype(np.float64) * a + np.asarray(BACKGROUND, dtype=np.float64) * (1 - a)


def as_rgb(levels: np.ndarray) -> np.ndarray:
    return np.repeat(levels[..., None], 3, axis=-1)


def reencoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def mode_cases():
    """(mode, PIL image in that mode, expected 8-bit RGB rendering, a format that stores the mode)."""
    grey = grey_levels()
    rgb = colour_pixels()
    alpha = alpha_channel()
    sixteen = grey.astype(np.uint16) * 257
    big_endian = Image.frombytes("I;16B", (grey.shape[1], grey.shape[0]), sixteen.astype(">u2").tobytes())
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.info["transparency"] = 3
    palette_rgb = np.asarray(palette.convert("RGB")).astype(np.float64)
    palette_alpha = np.where(np.asarray(palette) == 3, 0, 255).astype(np.uint8)
    bilevel = grey >= 128
    yield "I;16", Image.fromarray(sixteen), as_rgb(grey), "PNG"
    yield "I;16B", big_endian, as_rgb(grey), "TIFF"
    yield "I", Image.fromarray(sixteen.astype(np.int32)), as_rgb(grey), "TIFF"
    yield "F", Image.fromarray(grey.astype(np.float32) / 255), as_rgb(grey), "TIFF"
    yield "F 0..255", Image.fromarray(grey.astype(np.float32)), as_rgb(grey), "TIFF"
    yield "L", Image.fromarray(grey), as_rgb(grey), "PNG"
    yield "LA", Image.fromarray(np.stack([grey, alpha], -1)), over_background(as_rgb(grey), alpha), "PNG"
    yield "P+transparency", palette, over_background(palette_rgb, palette_alpha), "PNG"
    yield "RGBA", Image.fromarray(np.dstack([rgb, alpha])), over_background(rgb, alpha), "PNG"
    yield "CMYK", Image.fromarray(rgb).convert("CMYK"), rgb, "TIFF"
    yield "1", Image.fromarray(bilevel).convert("1"), as_rgb(np.where(bilevel, 255, 0).astype(np.uint8)), "PNG"


CASES = list(mode_cases())


@pytest.mark.parametrize("name, image, expected, fmt", CASES, ids=[case[0] for case in CASES])
def test_every_mode_matches_its_8bit_rendering(name, image, expected, fmt):
    assert image.mode == name.split()[0].split("+")[0]
    from_file = Image.open(io.BytesIO(reencoded(image, fmt)))
    assert from_file.mode == image.mode, "the format stores the mode as it is"
    for item in (image, reencoded(image, fmt)):
        rendered = load_image(item)
        assert rendered.mode == "RGB" and rendered.size == image.size
        difference = np.abs(np.asarray(rendered).astype(np.float64) - expected)
        assert difference.max() <= 2, f"{name}: up to {difference.max()} levels off"


def test_sixteen_bit_png_is_not_saturated():
    # the failure this guards against: PIL's own convert("RGB") turns this into white
    dark = Image.fromarray(np.full((8, 8), 64 * 257, dtype=np.uint16))
    assert np.asarray(dark.convert("RGB")).min() == 255
    assert np.asarray(load_image(reencoded(dark, "PNG"))).max() == 64


def test_float_images_clip_out_of_range_values_and_nan():
    values = np.array([[np.nan, -3.0, 0.5, 300.0]], dtype=np.float32)
    assert np.asarray(to_rgb(Image.fromarray(values)))[0, :, 0].tolist() == [0, 0, 0, 255]
    with_infinity = np.array([[0.0, 0.5, np.inf, -np.inf]], dtype=np.float32)  # still a [0, 1] image
    assert np.asarray(to_rgb(Image.fromarray(with_infinity)))[0, :, 0].tolist() == [0, 128, 255, 0]
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert np.asarray(to_rgb(Image.fromarray(unit)))[0, :, 0].tolist() == [0, 128, 255]


def test_preprocess_image_converts_like_load_image(tiny_model):
    for name, image, _, _ in CASES:
        np.testing.assert_array_equal(preprocess_image(image, tiny_model.preprocess_cfg),
                                      preprocess_image(load_image(image), tiny_model.preprocess_cfg), err_msg=name)


# --- training, evaluation and the Encoder see the same pixels ---

def rotated_jpeg(path: Path) -> Path:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to display")."""
    stored = Image.fromarray(colour_pixels(64, 40, seed=3)).resize((64, 40))
    stored.paste((255, 0, 0), (0, 0, 32, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())
    return path


def one_row_dataset(folder: Path, image_name: str) -> Path:
    row = {"safe_text": "a photo", "unsafe_text": "a bad photo", "safe_image": image_name, "category": "gore"}
    path = folder / "data.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def test_rotated_jpeg_trains_on_the_pixels_the_encoder_serves(tmp_path, tiny_model, tiny_model_dir):
    image_path = rotated_jpeg(tmp_path / "rotated.jpg")
    items = load_dataset(one_row_dataset(tmp_path, "rotated.jpg")).items
    training = QuadrupletDataset(items, tiny_model.preprocess, tiny_model.tokenizer,
                                 with_unsafe_images=False)[0]["safe_image"]
    served = preprocess_image(load_image(image_path), tiny_model.preprocess_cfg)
    np.testing.assert_allclose(training.numpy(), served, atol=1e-6)
    with Image.open(image_path) as stored:  # the pixels as stored, ignoring the EXIF tag
        sideways = tiny_model.preprocess(stored.convert("RGB")).numpy()
    assert np.abs(sideways - served).max() > 0.5, "the orientation was applied"

    encoder = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    network = encoder._runtime.loaded.model
    with torch.inference_mode():
        trained_on = network.encode_image(training[None]).numpy()
    trained_on /= np.linalg.norm(trained_on, axis=1, keepdims=True)
    np.testing.assert_allclose(encoder.encode_image([image_path]), trained_on, atol=1e-5)


def png_header(width: int, height: int) -> bytes:
    """A PNG cut short at the start of its pixel data: the header of a huge image, no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 4096) + b"IDAT" + bytes(16)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_over_limit_image_gives_one_message_in_training_and_in_the_encoder(tmp_path, tiny_model,
                                                                           tiny_model_dir):
    side = int(DEFAULT_MAX_PIXELS ** 0.5) + 100
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(side, side))
    encoder = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    with pytest.raises(ImageError) as served:
        encoder.encode_image([huge])
    served_message = str(served.value)
    assert served_message.startswith(f"{huge}: image too large: {side}x{side}") and "corrupt" not in served_message

    dataset_file = one_row_dataset(tmp_path, "huge.png")
    with pytest.raises(DataError) as checked:
        load_dataset(dataset_file)
    assert str(checked.value).startswith(f"{dataset_file}:1: safe image {served_message}")

    items = load_dataset(dataset_file, check_images=False).items
    with pytest.raises(DataError) as trained:
        QuadrupletDataset(items, tiny_model.preprocess, tiny_model.tokenizer, with_unsafe_images=False)[0]
    assert str(trained.value) == f"{dataset_file}:1: {served_message}"
    with pytest.raises(DataError) as evaluated:
        load_image_tensor(huge, tiny_model.preprocess)  # what zero-shot evaluation and export read with
    assert str(evaluated.value) == served_message
