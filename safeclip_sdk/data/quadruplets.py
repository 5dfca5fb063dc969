"""Quadruplets (safe text, unsafe text, safe image, unsafe image) and the rows that could not be used."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Quadruplet:
    """One safe/unsafe pair of captions and images that share one meaning."""

    safe_text: str
    unsafe_text: str
    safe_image: Path
    unsafe_image: Path | None = None
    category: str | None = None  # the user's label; known ones normalised (see categories.py)
    label: str | None = None  # class name of the safe image's subject, for zero-shot checks
    source: str = ""  # "file:line", used in messages


@dataclass(frozen=True)
class BadRow:
    """A dataset row that cannot be used, and why."""

    source: str  # "path/to/file.jsonl:17"
    reason: str  # "missing field 'safe_text'"

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class QuadrupletSet:
    """The usable quadruplets of one dataset file, plus the rows that were dropped."""

    items: list[Quadruplet]
    bad_rows: list[BadRow]
    path: Path

    @property
    def has_unsafe_images(self) -> bool:
        """True iff every quadruplet has an unsafe image (the image-side losses need them)."""
        return bool(self.items) and all(item.unsafe_image is not None for item in self.items)

    def __len__(self) -> int:
        return len(self.items)


class RowError(ValueError):
    """Raised while reading one row; becomes a :class:`BadRow` with this message as reason."""


def required_text(row: dict, field: str) -> str:
    """``row[field]`` as a non-blank string, or :class:`RowError` saying what is wrong."""
    if field not in row or row[field] is None:
        raise RowError(f"missing field '{field}'")
    return _checked_text(row[field], field)


def optional_text(row: dict, field: str) -> str | None:
    """``row[field]`` as a non-blank string, ``None`` when absent or null."""
    if row.get(field) is None:
        return None
    return _checked_text(row[field], field)


def _checked_text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"field '{field}' is empty")
    return value.strip()


def read_text_lines(path: Path) -> Iterator[tuple[str, str | RowError]]:
    """``("file:LINE", text)`` for each line of a file (a leading UTF-8 BOM dropped), or a
    :class:`RowError` in place of the text of a line that is not UTF-8."""
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if number == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    yield f"{path}:{number}", raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield f"{path}:{number}", RowError(not_utf8_reason(error))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error


def not_utf8_reason(error: UnicodeDecodeError) -> str:
    """``not UTF-8 (invalid start byte 0xff at byte 13 of the line; ...)``: why a line failed."""
    byte = error.object[error.start:error.start + 1].hex()
    return (f"not UTF-8 ({error.reason} 0x{byte} at byte {error.start + 1} of the line; "
            f"save the file as UTF-8)")
