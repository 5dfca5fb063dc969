"""Bounds on what a request may carry: body size (an ASGI middleware), inputs per request, text
length, image pixels, and where image paths may point. Each refusal names the field."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.images import check_image
from ..errors import ImageError
from .errors import ApiError, error_response
from .image_urls import fetch_image_url, is_image_url
from .settings import ServeSettings

DATA_URL_PREFIX = "data:"


class BodySizeLimit:
    """Answers 413 for a body over ``max_bytes``, whether announced by Content-Length or streamed.

    The body is read here, counted as it arrives, and handed on whole: the routes parse whole
    JSON bodies anyway, and an error raised while they read would turn into FastAPI's 400.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"the request body is larger than {self.max_bytes} bytes",
                                   "invalid_request_error", "body")
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body_message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return body_message

        await self.app(scope, replay, send)


def input_list(value: str | list[Any], settings: ServeSettings) -> list[Any]:
    """``input`` as a non-empty list of at most ``max_inputs`` items."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ApiError(422, "input: give at least one input", param="input")
    if len(items) > settings.max_inputs:
        raise ApiError(413, f"input: {len(items)} inputs, at most {settings.max_inputs} per request", param="input")
    return items


def checked_text(value: Any, field: str, settings: ServeSettings) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"{field}: expected a string, got {type(value).__name__}", param=field)
    if not value.strip():
        raise ApiError(422, f"{field}: empty text", param=field)
    if len(value) > settings.max_text_chars:
        raise ApiError(413, f"{field}: {len(value)} characters, at most {settings.max_text_chars}", param=field)
    return value


def checked_image(value: Any, field: str, settings: ServeSettings) -> bytes | Path:
    """An image input (a base64 data URL, an http(s) URL when the server fetches them, or a path
    under the image root) as bytes or a path, its header checked: 413 over the pixel limit, 422 not
    an image, 403 outside the root."""
    if not isinstance(value, str):
        raise ApiError(422, f"{field}: expected a data URL (data:image/png;base64,...) string", param=field)
    if value.startswith(DATA_URL_PREFIX):
        image: bytes | Path = _data_url_bytes(value, field)
    elif is_image_url(value):
        image = fetch_image_url(value, field, settings)
    elif settings.image_root is not None:
        image = _path_under_root(value, field, settings.image_root)
    else:
        raise ApiError(422, f"{field}: expected a data URL (data:image/png;base64,...); image paths are off "
                            f"(the server has no image root)", param=field)
    _check_pixels(image, field, settings.max_image_pixels)
    return image


def _data_url_bytes(value: str, field: str) -> bytes:
    header, comma, payload = value.partition(",")
    if not comma or not header.endswith(";base64") or not header[len(DATA_URL_PREFIX):].startswith("image/"):
        raise ApiError(422, f"{field}: expected data:image/<type>;base64,<data>", param=field)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field}: the data URL is not valid base64", param=field) from None
    if not data:
        raise ApiError(422, f"{field}: the image is empty", param=field)
    return data


def _path_under_root(value: str, field: str, root: Path) -> Path:
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise ApiError(403, f"{field}: the path is outside the server's image root", "permission_error", field)
    if not path.is_file():
        raise ApiError(422, f"{field}: no such image under the server's image root", param=field)
    return path


def _check_pixels(image: bytes | Path, field: str, max_pixels: int) -> None:
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            width, height = opened.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"{field}: the image has too many pixels (at most {max_pixels})", param=field) from None
    except (OSError, ValueError, SyntaxError):
        raise ApiError(422, f"{field}: not a readable image", param=field) from None
    if width * height > max_pixels:
        raise ApiError(413, f"{field}: {width}x{height} image, at most {max_pixels} pixels", param=field)
    try:
        check_image(image, max_pixels=max_pixels, label=field)
    except ImageError as error:
        raise ApiError(422, f"{field}: {error.reason}", param=field) from None
