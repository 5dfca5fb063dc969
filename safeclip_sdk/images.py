"""Image loading and open_clip's evaluation transform, without torch or torchvision.

``load_image`` turns a path, raw bytes or a PIL image into an RGB PIL image (EXIF orientation
applied, ``convert("RGB")`` as open_clip does), refusing decompression bombs from the header
before any pixel is decoded. ``preprocess_image`` reproduces open_clip's ``image_transform_v2``
(eval) step by step with PIL and numpy, so the ONNX and TensorRT backends feed the exact pixels
the torch backend gets from open_clip.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit, here applied per call
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Errors PIL raises on damaged files; which one depends on the format plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def describe_item(item: Any, index: int | None = None) -> str:
    """How an error message names an input: its path, ``bytes[i]`` or ``image #i``."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    suffix = "" if index is None else f"[{index}]"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"bytes{suffix}"
    return "image" if index is None else f"image #{index}"


def load_image(item: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               label: str | None = None) -> Image.Image:
    """Decode one image to RGB, with its EXIF orientation applied.

    Args:
        item: a file path, the encoded bytes of an image file, or a PIL image.
        max_pixels: images with more pixels are refused (checked from the file header).
        label: how errors name the item (defaults to the path, ``bytes`` or ``image``).

    Raises:
        ImageError: missing, empty, corrupt or truncated file, zero-size or oversized image,
            unsupported input type.
    """
    label = label or describe_item(item)
    if isinstance(item, Image.Image):
        image = item
        _check_size(image.size, max_pixels, label)
        try:
            image.load()
            return _to_rgb(image)
        except _DECODE_ERRORS as error:
            raise ImageError(label, f"corrupt or truncated image ({_reason(error)})") from error
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageError(label, "empty bytes, not an image")
        return _decode(io.BytesIO(bytes(item)), max_pixels, label)
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise ImageError(label, "file not found")
        if path.is_dir():
            raise ImageError(label, "is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(label, "empty file, not an image")
        try:
            with path.open("rb") as file:
                return _decode(file, max_pixels, label)
        except PermissionError as error:
            raise ImageError(label, f"cannot read file ({error.strerror})") from error
    raise ImageError(label, f"unsupported input type {type(item).__name__} "
                     f"(expected a file path, image bytes or a PIL image)")


def _decode(file: BinaryIO, max_pixels: int, label: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            _check_size(image.size, max_pixels, label)  # header only: nothing decoded yet
            image.load()
            return _to_rgb(image)
    except Image.DecompressionBombError as error:  # PIL's own process-wide limit, when lower
        raise ImageError(label, f"image too large, refused as a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageError(label, "not an image or an unsupported format") from error
    except _DECODE_ERRORS as error:
        raise ImageError(label, f"corrupt or truncated image ({_reason(error)})") from error


def _check_size(size: tuple[int, int], max_pixels: int, label: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(label, f"zero-size image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(label, f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels} "
                         f"(possible decompression bomb)")


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# --- open_clip's eval transform (open_clip/transform.py, torchvision's PIL functional ops) ---

def preprocess_image(image: Image.Image, image_cfg: Mapping[str, Any]) -> np.ndarray:
    """open_clip's evaluation transform for one PIL image: float32 array [3, H, W].

    ``image_cfg`` holds open_clip's preprocess config keys (``size``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode``, ``fill_color``), as in a model folder or an export
    manifest. Any PIL mode is accepted; like open_clip, resizing happens in the image's own
    mode and ``convert("RGB")`` comes after cropping. The result equals open_clip's tensor.
    """
    height, width = _size_hw(image_cfg["size"])
    interpolation = image_cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise ValueError(f"unsupported interpolation '{interpolation}' (open_clip: bicubic, bilinear)")
    # open_clip maps 'random' to bicubic at eval time
    resample = Image.Resampling.BILINEAR if interpolation == "bilinear" else Image.Resampling.BICUBIC
    resize_mode = image_cfg.get("resize_mode", "shortest")
    if resize_mode == "shortest":
        if height == width:
            image = _resize(image, _shortest_edge_size(image.size, height), resample)
        else:
            # open_clip builds ResizeKeepRatio without its interpolation here: always bicubic
            image = _resize(image, _keep_ratio_size(image.size, (height, width), longest=0.0),
                            Image.Resampling.BICUBIC)
        image = _center_crop_or_pad(image, (height, width), fill=0)
    elif resize_mode == "longest":
        image = _resize(image, _keep_ratio_size(image.size, (height, width), longest=1.0), resample)
        image = _center_crop_or_pad(image, (height, width), fill=int(image_cfg.get("fill_color", 0)))
    elif resize_mode == "squash":
        image = _resize(image, (height, width), resample)
    else:
        raise ValueError(f"unsupported resize_mode '{resize_mode}' (open_clip: shortest, longest, squash)")
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255)
    mean = np.asarray(image_cfg["mean"], dtype=np.float32)
    std = np.asarray(image_cfg["std"], dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def _size_hw(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))
    return int(size), int(size)


def _shortest_edge_size(image_size: tuple[int, int], edge: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the short edge becomes ``edge``, the long edge is truncated."""
    w, h = image_size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = edge, int(edge * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def _keep_ratio_size(image_size: tuple[int, int], target_hw: tuple[int, int], longest: float) -> tuple[int, int]:
    """open_clip ``ResizeKeepRatio.get_params`` without its random scale and aspect jitter."""
    w, h = image_size
    ratio_h, ratio_w = h / target_hw[0], w / target_hw[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h * 1.0 / ratio), round(w * 1.0 / ratio)


def _resize(image: Image.Image, size_hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    if (image.height, image.width) == tuple(size_hw):
        return image
    return image.resize((size_hw[1], size_hw[0]), resample)


def _center_crop_or_pad(image: Image.Image, size_hw: tuple[int, int], fill: int) -> Image.Image:
    crop_h, crop_w = size_hw
    if crop_w > image.width or crop_h > image.height:
        padding = ((crop_w - image.width) // 2 if crop_w > image.width else 0,
                   (crop_h - image.height) // 2 if crop_h > image.height else 0,
                   (crop_w - image.width + 1) // 2 if crop_w > image.width else 0,
                   (crop_h - image.height + 1) // 2 if crop_h > image.height else 0)
        image = _pad(image, padding, fill)
        if (image.width, image.height) == (crop_w, crop_h):
            return image
    top = int(round((image.height - crop_h) / 2.0))
    left = int(round((image.width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _pad(image: Image.Image, padding: tuple[int, int, int, int], fill: int) -> Image.Image:
    """torchvision's constant PIL pad: one fill value per band, palette kept for mode P."""
    bands = len(image.getbands())
    fill_value: int | float | tuple = fill if bands == 1 else (fill,) * bands
    if image.mode != "F":
        fill_value = tuple(int(v) for v in fill_value) if isinstance(fill_value, tuple) else int(fill_value)
    if image.mode == "P":
        palette = image.getpalette()
        padded = ImageOps.expand(image, border=padding, fill=fill_value)
        padded.putpalette(palette)
        return padded
    return ImageOps.expand(image, border=padding, fill=fill_value)
