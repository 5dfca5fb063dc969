"""``load_dataset``: read a quadruplet file, check every image, apply the bad-row policy."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from .images import DEFAULT_MAX_PIXELS, check_image
from .jsonl import read_jsonl
from .quadruplets import BadRow, Quadruplet, QuadrupletSet
from .visu import read_visu

logger = logging.getLogger(__name__)

_VISU_FIELDS = {"safe", "nsfw", "coco_id"}
_CHECK_CHUNK = 2048  # images handed to the thread pool at a time (bounds the pending futures)


def load_dataset(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                 unsafe_image_root: str | os.PathLike | None = None, skip_bad: bool = False,
                 check_images: bool = True) -> QuadrupletSet:
    """Load quadruplets from a generic ``.jsonl`` file or a ViSU-Text ``.json`` file.

    Args:
        path: the dataset file. ``.jsonl``: one quadruplet per line (see docs/data-format.md);
            ``.json`` (or ``.jsonl`` rows with ViSU fields): ViSU-Text.
        image_root: ViSU: the COCO root holding ``train2017/`` and ``val2017/``. JSONL: the
            folder relative image paths start from (default: the JSONL file's folder).
        unsafe_image_root: ViSU: folder of ``{incremental_id}.jpg|png`` unsafe images. JSONL:
            the folder relative ``unsafe_image`` paths start from (default: as ``image_root``).
        skip_bad: drop bad rows (listed in ``bad_rows``) instead of stopping at them.
        check_images: open every image once so that corrupt files are caught now, not
            mid-training. Missing image files are always caught.

    Raises:
        DataError: one line naming the first bad row and how many there are (unless
            ``skip_bad``), or naming the file when it cannot be read or has no usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    image_root = Path(image_root) if image_root is not None else None
    unsafe_image_root = Path(unsafe_image_root) if unsafe_image_root is not None else None
    suffix = path.suffix.lower()
    if suffix == ".jsonl" and not _has_visu_rows(path):
        rows = read_jsonl(path, image_root=image_root, unsafe_image_root=unsafe_image_root)
    elif suffix in (".json", ".jsonl"):
        rows = read_visu(path, image_root=image_root, unsafe_image_root=unsafe_image_root,
                         json_lines=suffix == ".jsonl")
    else:
        raise DataError(f"{path}: unknown dataset format '{path.suffix}' (expected .jsonl for the "
                        f"generic format or .json for ViSU-Text)")
    if not rows:
        raise DataError(f"{path}: the file holds no rows")

    rows = check_image_files(rows, decode=check_images, description=path.name)
    items = [row for row in rows if isinstance(row, Quadruplet)]
    bad_rows = [row for row in rows if isinstance(row, BadRow)]
    if bad_rows and not skip_bad:
        raise DataError(bad_rows_message(bad_rows))
    if not items:
        raise DataError(f"{path}: no usable rows (all {len(bad_rows)} are bad; first: {bad_rows[0]})")
    if bad_rows:
        logger.warning("%s: skipped %d bad rows (first: %s)", path, len(bad_rows), bad_rows[0])
    return QuadrupletSet(items, bad_rows, path)


def bad_rows_message(bad_rows: list[BadRow]) -> str:
    """One line: the first bad row, and how many more there are."""
    first = bad_rows[0]
    if len(bad_rows) == 1:
        return f"{first} (1 bad row; fix it or pass --skip-bad)"
    more = len(bad_rows) - 1
    return f"{first} (and {more} more bad row{'s' if more > 1 else ''}; fix them or pass --skip-bad)"


def check_image_files(rows: list[Quadruplet | BadRow], *, decode: bool = True,
                      description: str = "") -> list[Quadruplet | BadRow]:
    """The same rows, with each quadruplet whose image is missing (or, with ``decode``,
    unreadable) replaced by a :class:`BadRow`. Each distinct image is looked at once."""
    paths = {path for row in rows if isinstance(row, Quadruplet)
             for path in (row.safe_image, row.unsafe_image) if path is not None}
    listing = _FolderListing()
    missing = {path for path in paths if path not in listing}
    corrupt: dict[Path, str] = {}
    if decode:
        to_open = sorted(paths - missing)
        progress = tqdm(total=len(to_open), unit="img", desc=f"checking images {description}".strip(),
                        disable=None)
        with ThreadPoolExecutor() as pool, progress:
            for start in range(0, len(to_open), _CHECK_CHUNK):
                chunk = to_open[start:start + _CHECK_CHUNK]
                for path, problem in zip(chunk, pool.map(image_problem, chunk)):
                    if problem is not None:
                        corrupt[path] = problem
                progress.update(len(chunk))
    if not missing and not corrupt:
        return rows
    return [_with_image_check(row, missing, corrupt) for row in rows]


def image_problem(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why an image file cannot be used (the reason :func:`safeclip_sdk.data.images.load_image`
    would give), or ``None`` when it decodes."""
    try:
        check_image(path, max_pixels=max_pixels)
    except ImageError as error:
        return error.reason
    return None


def _with_image_check(row: Quadruplet | BadRow, missing: set[Path],
                      corrupt: dict[Path, str]) -> Quadruplet | BadRow:
    if isinstance(row, BadRow):
        return row
    for kind, path in (("safe", row.safe_image), ("unsafe", row.unsafe_image)):
        if path in missing:
            return BadRow(row.source, f"{kind} image not found: {path}")
        if path in corrupt:
            return BadRow(row.source, f"{kind} image {path}: {corrupt[path]}")
    return row


class _FolderListing:
    """``path in listing``: one directory listing per folder instead of one stat per file."""

    def __init__(self) -> None:
        self._files: dict[Path, set[str] | None] = {}

    def __contains__(self, path: Path) -> bool:
        folder = path.parent
        if folder not in self._files:
            try:
                with os.scandir(folder) as entries:
                    self._files[folder] = {entry.name for entry in entries if entry.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                self._files[folder] = set()
            except OSError:
                self._files[folder] = None  # not listable (permissions): ask about each file
        names = self._files[folder]
        return path.is_file() if names is None else path.name in names


def _has_visu_rows(path: Path) -> bool:
    """Whether the first row of a JSON-lines file has ViSU fields rather than generic ones."""
    try:
        with path.open("rb") as lines:
            first = next((line for line in lines if line.strip()), b"")
        row = json.loads(first.decode("utf-8", "replace"))
    except (OSError, json.JSONDecodeError):
        return False  # read_jsonl reports the problem with its line number
    return isinstance(row, dict) and _VISU_FIELDS <= row.keys() and "safe_text" not in row
