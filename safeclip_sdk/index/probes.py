"""Probe files: the labelled queries an audit searches a collection with.

A probe file is JSON Lines. The first line is a header that says which payload field marks an
item of the collection as unsafe and which categories the probes may carry; every further line is
one probe:

.. code-block:: json

    {"safeclip_probes": 1, "unsafe_field": "unsafe", "categories": ["violence", "weapons"]}
    {"text": "a man with a knife in the park", "label": "unsafe", "category": "weapons", "expected": [12]}
    {"text": "a man with a kite in the park", "label": "safe", "category": "weapons", "expected": [12]}
    {"image": "probes/0003.png", "label": "safe", "expected": ["3f2c..."]}

- ``text`` or ``image`` (exactly one): the query; an image path is relative to the image root
  and must stay inside it once ``..`` and symlinks are resolved.
- ``label``: ``safe`` or ``unsafe``.
- ``category``: one of the header's categories; required for unsafe probes (figures are given
  per category), optional for safe ones (a safe probe's category is the category its unsafe
  twin would have, so the leak is also broken down by category).
- ``expected``: optional ids of the items the query should find (the item itself for a safe
  probe, its safe counterpart for an unsafe one); probes with it are counted in the recall.
- ``id``: optional, names the probe in the report.

Any other key, an unknown category, a file without unsafe probes, and an image path outside the
root are refused with one line naming the file and line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.images import check_image
from ..errors import ImageError, SafeclipError

FORMAT_KEY = "safeclip_probes"
FORMAT_VERSION = 1
SAFE_LABEL, UNSAFE_LABEL = "safe", "unsafe"
_PROBE_KEYS = {"text", "image", "label", "category", "expected", "id"}


class ProbeError(SafeclipError):
    """A probe file that cannot be used; the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Probe:
    """One query: a text, or an image file (absolute, checked to be inside the image root)."""

    line: int
    label: str
    category: str | None
    text: str | None = None
    image: Path | None = None
    expected: tuple[Any, ...] = ()
    name: str | None = None

    @property
    def query(self) -> str | Path:
        return self.text if self.text is not None else self.image

    @property
    def unsafe(self) -> bool:
        return self.label == UNSAFE_LABEL


@dataclass
class ProbeSet:
    """The probes of a file, the payload field that marks unsafe items and the allowed categories."""

    path: str
    unsafe_field: str
    categories: list[str]
    probes: list[Probe] = field(default_factory=list)

    def of(self, label: str) -> list[Probe]:
        return [probe for probe in self.probes if probe.label == label]

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "unsafe_field": self.unsafe_field, "categories": self.categories,
                "probes": {label: len(self.of(label)) for label in (UNSAFE_LABEL, SAFE_LABEL)}}


def read_probes(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ProbeSet:
    """Read and check a probe file (see the module docstring); images are checked to be readable."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ProbeError(f"probe file {path}: cannot read it ({error.__class__.__name__}: {error})") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise ProbeError(f"probe file {path} is empty")
    header = _header(path, *numbered[0])
    root = Path(image_root).resolve() if image_root is not None else None
    probes = ProbeSet(str(path), header["unsafe_field"], header["categories"])
    for number, line in numbered[1:]:
        probes.probes.append(_probe(path, number, _json(path, number, line), probes.categories, root))
    if not probes.of(UNSAFE_LABEL):
        raise ProbeError(f"probe file {path} has no unsafe probes: the audit measures what unsafe queries find")
    return probes


def _json(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ProbeError(f"{path}:{number}: not JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise ProbeError(f"{path}:{number}: a line is a JSON object, not {type(value).__name__}")
    return value


def _header(path: Path, number: int, line: str) -> dict[str, Any]:
    header = _json(path, number, line)
    if header.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ProbeError(f"{path}:{number}: the first line must be the header "
                         f'{{"{FORMAT_KEY}": {FORMAT_VERSION}, "unsafe_field": ..., "categories": [...]}}')
    unsafe_field, categories = header.get("unsafe_field"), header.get("categories")
    if not isinstance(unsafe_field, str) or not unsafe_field:
        raise ProbeError(f"{path}:{number}: the header needs \"unsafe_field\", the payload field that is true on "
                         f"the collection's unsafe items")
    if (not isinstance(categories, list) or not categories
            or not all(isinstance(c, str) and c.strip() for c in categories)):
        raise ProbeError(f"{path}:{number}: the header needs \"categories\", a non-empty list of category names")
    return {"unsafe_field": unsafe_field, "categories": [c.strip() for c in categories]}


def _probe(path: Path, number: int, row: dict[str, Any], categories: list[str], root: Path | None) -> Probe:
    where = f"{path}:{number}"
    unknown = sorted(set(row) - _PROBE_KEYS)
    if unknown:
        raise ProbeError(f"{where}: unknown key '{unknown[0]}' (a probe has {', '.join(sorted(_PROBE_KEYS))})")
    label = row.get("label")
    if label not in (SAFE_LABEL, UNSAFE_LABEL):
        raise ProbeError(f"{where}: label must be '{SAFE_LABEL}' or '{UNSAFE_LABEL}', got {label!r}")
    category = row.get("category")
    if category is None:
        if label == UNSAFE_LABEL:
            raise ProbeError(f"{where}: an unsafe probe needs a category (one of: {', '.join(categories)})")
    elif not isinstance(category, str) or category.strip() not in categories:
        raise ProbeError(f"{where}: unknown category {category!r} (the header allows: {', '.join(categories)})")
    expected = row.get("expected", [])
    if not isinstance(expected, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool)
                                                 for i in expected):
        raise ProbeError(f"{where}: expected must be a list of item ids (integers or strings)")
    name = row.get("id")
    common = dict(line=number, label=label, category=category.strip() if category else None,
                  expected=tuple(expected), name=None if name is None else str(name))
    if ("text" in row) == ("image" in row):
        raise ProbeError(f"{where}: a probe has exactly one of 'text' and 'image'")
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ProbeError(f"{where}: text must be a non-empty string")
        return Probe(text=row["text"], **common)
    return Probe(image=_image(where, row["image"], root), **common)


def _image(where: str, value: Any, root: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ProbeError(f"{where}: image must be a path relative to the image root")
    if root is None:
        raise ProbeError(f"{where}: image probe '{value}' needs an image root (image_root=..., --image-root)")
    try:
        resolved = (root / value).resolve()  # an absolute value replaces the root, and is refused below
    except (OSError, ValueError) as error:
        raise ProbeError(f"{where}: image path '{value}' is not usable ({error})") from None
    if not resolved.is_relative_to(root):
        raise ProbeError(f"{where}: image path '{value}' is outside the image root")
    try:
        check_image(resolved, label=value)
    except ImageError as error:
        raise ProbeError(f"{where}: {error}") from None
    return resolved
