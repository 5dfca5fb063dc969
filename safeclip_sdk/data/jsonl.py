"""The generic JSONL format: one quadruplet per line.

``{"safe_text", "unsafe_text", "safe_image", "unsafe_image"?, "category"?, "label"?}``; ``category``
is any label (see :mod:`safeclip_sdk.data.categories`); image paths are absolute or relative to
the JSONL file's folder (or to ``image_root`` when one is given).
"""

from __future__ import annotations

import json
from pathlib import Path

from .categories import normalize_category
from .quadruplets import BadRow, Quadruplet, RowError, optional_text, read_text_lines, required_text


def read_jsonl(path: Path, *, image_root: Path | None = None,
               unsafe_image_root: Path | None = None) -> list[Quadruplet | BadRow]:
    """Every non-blank line of a JSONL file, in order, as a quadruplet or a bad row.

    A line that is not UTF-8 is a bad row like any other. Image files are not looked at here;
    :func:`safeclip_sdk.data.load_dataset` checks them.
    """
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    unsafe_image_root = Path(unsafe_image_root) if unsafe_image_root is not None else image_root
    rows: list[Quadruplet | BadRow] = []
    for source, line in read_text_lines(path):
        if isinstance(line, RowError):  # not UTF-8
            rows.append(BadRow(source, str(line)))
        elif line.strip():
            try:
                rows.append(_parse_line(line, source, image_root, unsafe_image_root))
            except RowError as error:
                rows.append(BadRow(source, str(error)))
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
    # an empty category reads as none: it is optional, and only required fields make bad rows
    blank_category = isinstance(row.get("category"), str) and not row["category"].strip()
    category = None if blank_category else optional_text(row, "category")
    return Quadruplet(
        safe_text=safe_text,
        unsafe_text=unsafe_text,
        safe_image=image_root / safe_image,
        unsafe_image=unsafe_image_root / unsafe_image if unsafe_image is not None else None,
        category=normalize_category(category) if category is not None else None,
        label=optional_text(row, "label"),
        source=source,
    )
