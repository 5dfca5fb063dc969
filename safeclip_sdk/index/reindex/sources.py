"""Where a point's content is: payload fields that hold a text, an image path or an image URL.

A reindex re-embeds each point from its source, named by payload fields: ``text_field`` holds the
text itself, ``image_field`` a path under ``image_root`` (or, only when ``allow_urls`` is set, an
``http(s)://`` URL, fetched with a size and a time limit). Field names may be dotted to reach into
nested payloads (``meta.path``). A payload comes from the database, not from the user, so a path
must stay inside ``image_root`` once ``..`` and symlinks are resolved.

Every lookup answers ``(content, None)`` or ``(None, reason)``, with a one-line reason for the
reindex report (``payload field 'path' is missing``, ``path '../x.png' is outside the image root``).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ImageError, SafeclipError
from ...data.images import DEFAULT_MAX_PIXELS, load_image

IMAGE, TEXT = "image", "text"
DEFAULT_MAX_URL_BYTES = 20 * 2**20
DEFAULT_URL_TIMEOUT = 10.0

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MISSING = object()
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class SourceReader:
    """Reads the content to embed from payloads.

    Args:
        image_field: payload field holding an image path (relative to ``image_root``) or URL.
        text_field: payload field holding the text.
        image_root: the folder image paths are resolved in and must not leave.
        allow_urls: fetch ``http(s)://`` image URLs (off by default: a payload could point anywhere).
        max_url_bytes: larger downloads are refused.
        url_timeout: seconds a whole download may take.
        max_pixels: larger images are refused (decompression bomb guard).
    """

    image_field: str | None = None
    text_field: str | None = None
    image_root: str | None = None
    allow_urls: bool = False
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES
    url_timeout: float = DEFAULT_URL_TIMEOUT
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if not self.image_field and not self.text_field:
            raise SafeclipError("name a payload field to read: an image field, a text field or both")
        if self.image_root is not None:
            root = Path(self.image_root).expanduser()
            if not root.is_dir():
                raise SafeclipError(f"image root '{self.image_root}' is not a folder")
            object.__setattr__(self, "image_root", str(root.resolve()))
        elif self.image_field and not self.allow_urls:
            raise SafeclipError(f"image field '{self.image_field}' needs an image root (the folder its paths "
                                f"are relative to) or allow_urls for URLs")
        if self.max_url_bytes < 1 or self.url_timeout <= 0:
            raise SafeclipError("max_url_bytes and url_timeout must be positive")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SourceReader:
        """The reader a job recorded with :meth:`to_dict`."""
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return {"image_field": self.image_field, "text_field": self.text_field, "image_root": self.image_root,
                "allow_urls": self.allow_urls, "max_url_bytes": self.max_url_bytes,
                "url_timeout": self.url_timeout, "max_pixels": self.max_pixels}

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of content this reader can read (``image``, ``text``)."""
        return tuple(kind for kind, field_name in ((IMAGE, self.image_field), (TEXT, self.text_field)) if field_name)

    def read(self, payload: Mapping[str, Any], kind: str) -> tuple[Any, str | None]:
        """The source of ``kind`` in ``payload``, ready for the encoder: the text, or for an image
        the checked file path (``str``) or the downloaded bytes. Images are not decoded here, so
        the encoder's own threads can decode them; use :meth:`load` for a decoded image."""
        if kind == TEXT:
            return self._string(payload, self.text_field, TEXT)
        if kind != IMAGE:
            raise ValueError(f"unknown source kind {kind!r} (expected 'image' or 'text')")
        value, reason = self._string(payload, self.image_field, IMAGE)
        if reason is not None:
            return None, reason
        if _URL.match(value):
            return self._fetch(value)
        return self._local_path(value)

    def load(self, payload: Mapping[str, Any], kind: str) -> tuple[Any, str | None]:
        """Like :meth:`read`, but an image comes back decoded (an RGB PIL image), so a file that is
        not an image is reported here."""
        content, reason = self.read(payload, kind)
        if reason is not None or kind == TEXT:
            return content, reason
        label = content if isinstance(content, str) else str(lookup(payload, self.image_field))
        try:
            return load_image(content, max_pixels=self.max_pixels, label=label), None
        except ImageError as error:
            return None, f"{label}: {error.reason}"

    # --- steps ---

    def _string(self, payload: Mapping[str, Any], field_name: str | None, kind: str) -> tuple[Any, str | None]:
        if not field_name:
            raise ValueError(f"this reader has no {kind} field")
        value = lookup(payload, field_name)
        if value is _MISSING or value is None:
            return None, f"payload field '{field_name}' is missing"
        if not isinstance(value, str):
            return None, f"payload field '{field_name}' is {_kind_of(value)}, not a string"
        if not value.strip():
            return None, f"payload field '{field_name}' is empty"
        return value, None

    def _local_path(self, value: str) -> tuple[str | None, str | None]:
        if self.image_root is None:
            return None, f"'{_short(value)}' is a local path, but no image root was given"
        root = Path(self.image_root)
        try:
            resolved = (root / value).resolve()  # an absolute value replaces the root
        except (OSError, ValueError) as error:  # e.g. an embedded NUL byte, a symlink loop
            return None, f"path '{_short(value)}' is not a usable path ({error})"
        if not resolved.is_relative_to(root):
            return None, f"path '{_short(value)}' is outside the image root"
        if not resolved.exists():
            return None, f"file '{_short(value)}' not found under the image root"
        if not resolved.is_file():
            return None, f"'{_short(value)}' is not a file"
        return str(resolved), None

    def _fetch(self, url: str) -> tuple[bytes | None, str | None]:
        if not url.lower().startswith(("http://", "https://")):
            return None, f"URL '{_short(url)}' has an unsupported scheme (only http and https)"
        if not self.allow_urls:
            return None, f"URL '{_short(url)}' not allowed (URLs are fetched only with allow_urls)"
        deadline = time.monotonic() + self.url_timeout
        too_large = f"URL '{_short(url)}' is larger than {self.max_url_bytes} bytes"
        try:
            with _OPENER.open(url, timeout=self.url_timeout) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_url_bytes:
                    return None, too_large
                chunks, size = [], 0
                while chunk := response.read1(_CHUNK):  # what has arrived: a slow drip still meets the deadline
                    size += len(chunk)
                    if size > self.max_url_bytes:
                        return None, too_large
                    if time.monotonic() > deadline:
                        return None, f"URL '{_short(url)}' timed out after {self.url_timeout:g} s"
                    chunks.append(chunk)
        except urllib.error.HTTPError as error:
            return None, f"URL '{_short(url)}' failed: HTTP {error.code} {error.reason}"
        except (TimeoutError, socket.timeout):
            return None, f"URL '{_short(url)}' timed out after {self.url_timeout:g} s"
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                return None, f"URL '{_short(url)}' timed out after {self.url_timeout:g} s"
            return None, f"URL '{_short(url)}' failed: {error.reason}"
        except (OSError, ValueError) as error:  # connection reset, malformed URL
            return None, f"URL '{_short(url)}' failed: {error}"
        if size == 0:
            return None, f"URL '{_short(url)}' returned no data"
        return b"".join(chunks), None


def lookup(payload: Mapping[str, Any], field_name: str) -> Any:
    """``payload[field_name]``, or for a dotted name the nested value (``meta.path``); a key that
    itself contains the dots wins. Missing: a private sentinel that ``read`` reports."""
    if field_name in payload:
        return payload[field_name]
    value: Any = payload
    for part in field_name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) (urllib would also follow one to ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirect to a non-HTTP URL refused ({_short(newurl)})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _short(value: str, limit: int = 120) -> str:
    value = value.replace("\n", " ")
    return value if len(value) <= limit else value[:limit - 3] + "..."


def describe_source(reader: SourceReader, payload: Mapping[str, Any], kind: str) -> str:
    """The raw payload value a source comes from, for plans and reports (``photos/a.jpg``)."""
    field_name = reader.image_field if kind == IMAGE else reader.text_field
    value = lookup(payload, field_name) if field_name else _MISSING
    return "(missing)" if value is _MISSING else _short(str(value), 80)

