"""One image path for training, evaluation, the Encoder and export, without torch or torchvision.

``load_image`` turns a path, raw bytes or a PIL image into an 8-bit RGB PIL image: the EXIF
orientation applied, every PIL mode converted by :func:`to_rgb`, decompression bombs refused
from the header before any pixel is decoded. ``check_image`` tells whether a file would load,
without decoding it whole (what dataset loading runs on every image before training).
``preprocess_image`` reproduces open_clip's ``image_transform_v2`` (eval) step by step with PIL
and numpy, so the ONNX and TensorRT backends feed the exact pixels the torch backend gets from
open_clip.

Mode conversion (:func:`to_rgb`), where PIL's own ``convert("RGB")`` would be wrong:

- 16-bit greyscale (``I;16``, ``I;16B``, ...) and 32-bit integer ``I``: samples are read as
  16-bit values, 0..65535 mapped linearly onto 0..255 (``round(v / 257)``; ``I`` is clipped to
  that range). PIL's own conversion saturates them to white.
- float ``F``: an image whose values all lie in [0, 1] is read as 0..1 intensities (x255);
  otherwise as 0..255 levels. Values outside 0..255 are clipped, NaN reads as 0.
- transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``P``/``L``/``RGB`` with a transparent
  colour): composited onto a white background (``BACKGROUND``). PIL's conversion drops the
  alpha and shows whatever colour the transparent pixels happen to hold.
- ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...: PIL's conversion.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit, here applied per call
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited onto

# Every image safeclip opens has its size checked against max_pixels from the header, so PIL's
# decompression-bomb WARNING only prints noise beside safeclip's error (its ERROR, at twice its
# limit, is still raised and reported). Filtered once at import: warnings.catch_warnings is not
# thread-safe, and images are checked and decoded in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Errors PIL raises on damaged files; which one depends on the format plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


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
    """Decode one image to 8-bit RGB, with its EXIF orientation applied (see :func:`to_rgb`).

    Args:
        item: a file path, the encoded bytes of an image file, or a PIL image.
        max_pixels: images with more pixels are refused (checked from the file header).
        label: how errors name the item (defaults to the path, ``bytes`` or ``image``).

    Raises:
        ImageError: missing, empty, corrupt or truncated file, zero-size or oversized image,
            unsupported input type or colour mode.
    """
    label = label or describe_item(item)
    if isinstance(item, Image.Image):
        _check_size(item.size, max_pixels, label)
        try:
            item.load()
            return _upright_rgb(item, label)
        except _DECODE_ERRORS as error:
            raise ImageError(label, f"corrupt or truncated image ({_reason(error)})") from error
    with _opened(item, label) as file:
        return _decode(file, max_pixels, label)


def check_image(item: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                label: str | None = None) -> None:
    """Raise the :class:`ImageError` that :func:`load_image` would raise for this file, if any,
    at a fraction of the cost: the size comes from the header, PNG and other formats are
    verified without decoding, JPEG is decoded at 1/8 scale (which still reads the whole stream)."""
    label = label or describe_item(item)
    with _opened(item, label) as file:
        with _decode_errors(label, max_pixels), Image.open(file) as image:
            _check_size(image.size, max_pixels, label)
            if image.format == "JPEG":
                # verify() checks nothing for JPEG; DCT scaling decodes the stream cheaply
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            else:
                image.verify()


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB rendering of a PIL image of any mode (rules in the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        samples = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return _grey(((samples * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        samples = np.asarray(image, dtype=np.float64)
        finite = samples[np.isfinite(samples)]
        scale = 255.0 if finite.size == 0 or finite.max() <= 1.0 else 1.0
        samples = np.nan_to_num(samples * scale, nan=0.0, posinf=255.0, neginf=0.0)
        return _grey(np.clip(np.round(samples), 0, 255).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def _grey(levels: np.ndarray) -> Image.Image:
    return Image.fromarray(levels).convert("RGB")  # uint8 [H, W]: mode L


def _opened(item: Any, label: str) -> BinaryIO:
    """A readable binary file for a path or encoded bytes; ImageError for anything else."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ImageError(label, "empty bytes, not an image")
        return io.BytesIO(bytes(item))
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise ImageError(label, "file not found")
        if path.is_dir():
            raise ImageError(label, "is a folder, not an image file")
        try:
            if path.stat().st_size == 0:
                raise ImageError(label, "empty file, not an image")
            return path.open("rb")
        except PermissionError as error:
            raise ImageError(label, f"cannot read file ({error.strerror})") from error
    raise ImageError(label, f"unsupported input type {type(item).__name__} "
                     f"(expected a file path, image bytes or a PIL image)")


def _decode(file: BinaryIO, max_pixels: int, label: str) -> Image.Image:
    with _decode_errors(label, max_pixels), Image.open(file) as image:
        _check_size(image.size, max_pixels, label)  # header only: nothing decoded yet
        image.load()
        return _upright_rgb(image, label)


@contextmanager
def _decode_errors(label: str, max_pixels: int):
    """Turn what PIL raises on a bad file into one ImageError line."""
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL's process-wide limit, met in Image.open
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found.group(1)) if found else None
        limit = f"max_pixels={max_pixels}" if pixels is None or pixels > max_pixels else \
            f"PIL's process-wide limit (Image.MAX_IMAGE_PIXELS x 2 = {2 * (Image.MAX_IMAGE_PIXELS or 0)})"
        raise ImageError(label, f"image too large: {pixels or 'its'} pixels exceeds {limit} "
                                f"(possible decompression bomb)") from error
    except UnidentifiedImageError as error:
        raise ImageError(label, "not an image or an unsupported format") from error
    except _DECODE_ERRORS as error:
        raise ImageError(label, f"corrupt or truncated image ({_reason(error)})") from error


def _upright_rgb(image: Image.Image, label: str) -> Image.Image:
    upright = ImageOps.exif_transpose(image)
    try:
        return to_rgb(upright)
    except ValueError as error:  # a mode PIL opens but cannot convert (e.g. premultiplied La)
        raise ImageError(label, f"unsupported colour mode {image.mode} ({_reason(error)})") from error


def _check_size(size: tuple[int, int], max_pixels: int, label: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(label, f"zero-size image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(label, f"image too large: {width}x{height} = {width * height} pixels exceeds "
                         f"max_pixels={max_pixels} (possible decompression bomb)")


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# --- open_clip's eval transform (open_clip/transform.py, torchvision's PIL functional ops) ---

def preprocess_image(image: Image.Image, image_cfg: Mapping[str, Any]) -> np.ndarray:
    """open_clip's evaluation transform for one PIL image: float32 array [3, H, W].

    ``image_cfg`` holds open_clip's preprocess config keys (``size``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode``, ``fill_color``), as in a model folder or an export
    manifest. An image that is not RGB is first converted by :func:`to_rgb`, as
    :func:`load_image` does. The result equals open_clip's tensor for the RGB image.
    """
    image = to_rgb(image)
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
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
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
    """torchvision's constant PIL pad of an RGB image: one fill value for every band."""
    return ImageOps.expand(image, border=padding, fill=(int(fill),) * 3)
