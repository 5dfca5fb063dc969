"""The generic JSONL format: one quadruplet per line.

``{"safe_text", "unsafe_text", "safe_image", "unsafe_image"?, "category"?, "label"?}``; image paths
are absolute or relative to the JSONL file's folder (or to ``image_root`` when one is given).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from .categories import normalize_category
from .quadruplets import BadRow, Quadruplet, RowError, optional_text, required_text


def read_jsonl(path: Path, *, image_root: Path | None = None,
               unsafe_image_root: Path | None = None) -> list[Quadruplet | BadRow]:
    """Every non-blank line of a JSONL file, in order, as a quadruplet or a bad row.

    Image files are not looked at here; :func:`safeclip_sdk.data.load_dataset` checks them.
    """
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    unsafe_image_root = Path(unsafe_image_root) if unsafe_image_root is not None else image_root
    rows: list[Quadruplet | BadRow] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                source = f"{path}:{number}"
                try:
                    rows.append(_parse_line(line, source, image_root, unsafe_image_root))
                except RowError as error:
                    rows.append(BadRow(source, str(error)))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error
    return rows


def _parse_line(line: str, source: str, image_root: Path, unsafe_image_root: Path) -> Quadruplet:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise RowError(f"not valid JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    safe_text = required_text(row, "safe_text")
    unsafe_text = required_text(row, "unsafe_text")
    safe_image = required_text(row, "safe_image")
    unsafe_image = optional_text(row, "unsafe_image")
    category = optional_text(row, "category")
    if category is not None:
        try:
            category = normalize_category(category)
        except ValueError as error:
            raise RowError(str(error)) from error
    return Quadruplet(
        safe_text=safe_text,
        unsafe_text=unsafe_text,
        safe_image=image_root / safe_image,
        unsafe_image=unsafe_image_root / unsafe_image if unsafe_image is not None else None,
        category=category,
        label=optional_text(row, "label"),
        source=source,
    )
