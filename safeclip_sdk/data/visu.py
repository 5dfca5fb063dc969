"""The ViSU-Text format (Safe-CLIP): COCO captions with unsafe rewrites, images from COCO.

A row is ``{incremental_id, safe, nsfw, coco_id, tag, prompt_id}``. The safe image is
``{image_root}/train2017/{coco_id:012d}.jpg`` or ``.../val2017/...`` (Karpathy splits mix both);
unsafe images, when you have them, are ``{unsafe_image_root}/{incremental_id}.{jpg,png}``.
The file may be a list of rows, ``{"data": rows, ...}``, an object of rows keyed by id (keys
need not be contiguous integers), or JSON lines.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from .categories import normalize_category
from .quadruplets import BadRow, Quadruplet, RowError, read_text_lines, required_text

COCO_FOLDERS = ("train2017", "val2017")
UNSAFE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # preference order when several exist
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape decodes a non-UTF-8 byte to


def read_visu(path: Path, *, image_root: Path | None, unsafe_image_root: Path | None = None,
              json_lines: bool = False) -> list[Quadruplet | BadRow]:
    """Every row of a ViSU-Text file, in order, as a quadruplet or a bad row.

    Each COCO folder is listed once (not one ``stat`` per row). Rows of a JSON document are
    named ``file:row N`` (N counts from 1); rows of a JSON-lines file ``file:LINE``.
    """
    path = Path(path)
    if image_root is None:
        raise DataError(f"{path}: a ViSU file needs image_root, the COCO folder holding "
                        f"{' and '.join(COCO_FOLDERS)}/ (--image-root)")
    records = _read_json_lines(path) if json_lines else _read_json_records(path)
    coco_images = _index_coco(Path(image_root))
    unsafe_images = _index_by_stem(Path(unsafe_image_root)) if unsafe_image_root is not None else None
    rows: list[Quadruplet | BadRow] = []
    for source, record in records:
        try:
            if isinstance(record, RowError):
                raise record
            rows.append(_parse_row(record, source, Path(image_root), coco_images, unsafe_images,
                                   unsafe_image_root))
        except RowError as error:
            rows.append(BadRow(source, str(error)))
    return rows


def _read_json_records(path: Path) -> list[tuple[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error
    # bytes that are not UTF-8 survive decoding as lone surrogates and are found per row below
    text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # one JSON value per line, saved with a .json name
            return _read_json_lines(path)
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} "
                        f"column {error.colno})") from error
    if isinstance(document, dict) and "data" in document:
        document = document["data"]
    if isinstance(document, dict) and all(isinstance(row, dict) for row in document.values()):
        document = list(document.values())  # rows keyed by id, in file order
    if not isinstance(document, list):
        raise DataError(f"{path}: expected a list of rows, {{\"data\": rows}} or an object of rows "
                        f"keyed by id")
    records = []
    for number, row in enumerate(document, start=1):
        problem = _undecodable_field(row, raw)
        records.append((f"{path}:row {number}", RowError(problem) if problem else row))
    return records


def _undecodable_field(row: Any, raw: bytes) -> str | None:
    """Why a row of a JSON document holds bytes that are not UTF-8, with the file line they are on."""
    if not isinstance(row, dict):
        return None
    for field, value in row.items():
        if isinstance(value, str) and _SURROGATE.search(value):
            offset = raw.find(value.encode("utf-8", "surrogateescape"))
            line = raw.count(b"\n", 0, offset) + 1
            where = f" on line {line}" if offset >= 0 else ""
            return f"not UTF-8 (field '{field}'{where} holds bytes that are not UTF-8; save the file as UTF-8)"
    return None


def _read_json_lines(path: Path) -> list[tuple[str, Any]]:
    records: list[tuple[str, Any]] = []
    for source, line in read_text_lines(path):
        if isinstance(line, RowError):
            records.append((source, line))
        elif line.strip():
            try:
                records.append((source, json.loads(line)))
            except json.JSONDecodeError as error:
                records.append((source, RowError(f"not valid JSON ({error.msg} at column {error.colno})")))
    return records


def _parse_row(row: Any, source: str, image_root: Path, coco_images: dict[str, Path],
               unsafe_images: dict[str, Path] | None, unsafe_image_root: Path | None) -> Quadruplet:
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    safe_text = required_text(row, "safe")
    unsafe_text = required_text(row, "nsfw")
    coco_name = f"{_non_negative_int(row, 'coco_id'):012d}.jpg"
    category = normalize_category(required_text(row, "tag"))
    safe_image = coco_images.get(coco_name)
    if safe_image is None:
        raise RowError(f"COCO image {coco_name} is in neither {image_root / COCO_FOLDERS[0]} "
                       f"nor {image_root / COCO_FOLDERS[1]}")
    unsafe_image = None
    if unsafe_images is not None:
        incremental_id = str(_non_negative_int(row, "incremental_id"))
        unsafe_image = unsafe_images.get(incremental_id)
        if unsafe_image is None:
            raise RowError(f"unsafe image {incremental_id}.jpg/.png not found in {unsafe_image_root}")
    return Quadruplet(safe_text, unsafe_text, safe_image, unsafe_image, category, None, source)


def _non_negative_int(row: dict, field: str) -> int:
    value = row.get(field)
    if value is None:
        raise RowError(f"missing field '{field}'")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise RowError(f"field '{field}' must be a non-negative integer, got {value!r}")


def _index_coco(image_root: Path) -> dict[str, Path]:
    """``{file name: path}`` for every JPEG in the COCO folders (train2017 wins a tie)."""
    folders = [image_root / name for name in COCO_FOLDERS if (image_root / name).is_dir()]
    if not folders:
        raise DataError(f"{image_root}: no {' or '.join(COCO_FOLDERS)} folder; image_root must be "
                        f"the COCO root that holds them")
    index: dict[str, Path] = {}
    for folder in reversed(folders):
        index.update(_list_files(folder, (".jpg",)))
    return index


def _index_by_stem(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` for the images in a folder, preferring .jpg, then .jpeg, then .png."""
    if not folder.is_dir():
        raise DataError(f"{folder}: unsafe_image_root is not a folder")
    index: dict[str, Path] = {}
    for suffix in reversed(UNSAFE_IMAGE_SUFFIXES):
        index.update({Path(name).stem: path for name, path in _list_files(folder, (suffix,)).items()})
    return index


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    try:
        with os.scandir(folder) as entries:
            return {entry.name: folder / entry.name for entry in entries
                    if entry.name.lower().endswith(suffixes) and entry.is_file()}
    except OSError as error:
        raise DataError(f"{folder}: cannot list folder ({error.strerror or error})") from error
