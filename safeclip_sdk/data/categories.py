"""The 20 ViSU unsafe categories and their I2P coarse groups (Safe-CLIP paper, ViSU release)."""

from __future__ import annotations

import difflib
import re

CATEGORIES: tuple[str, ...] = (
    "hate", "harassment", "violence", "suffering", "humiliation", "harm", "suicide", "sexual",
    "nudity", "bodily fluids", "blood", "obscene gestures", "illegal activity", "drug use",
    "theft", "vandalism", "weapons", "abuse", "brutality", "cruelty",
)

COARSE_GROUPS: dict[str, tuple[str, ...]] = {
    "hate": ("hate",),
    "harassment": ("harassment",),
    "violence": ("violence", "suffering", "humiliation", "harm", "abuse", "brutality", "cruelty"),
    "self-harm": ("suicide",),
    "sexual": ("sexual", "nudity"),
    "shocking": ("bodily fluids", "blood", "obscene gestures"),
    "illegal activity": ("illegal activity", "drug use", "theft", "vandalism", "weapons"),
}

_GROUP_OF = {category: group for group, members in COARSE_GROUPS.items() for category in members}

# Close enough to repair a misspelling ("humilation"), far enough apart that no two
# categories are confused with each other.
_SPELLING_CUTOFF = 0.8


def normalize_category(tag: str) -> str:
    """The canonical category name for a tag: case, spacing, ``_``/``-`` and typos forgiven.

    Raises ``ValueError`` when the tag is not close to any of the 20 categories.
    """
    cleaned = re.sub(r"[\s_\-]+", " ", str(tag)).strip().lower()
    if cleaned in _GROUP_OF:
        return cleaned
    matches = difflib.get_close_matches(cleaned, CATEGORIES, n=1, cutoff=_SPELLING_CUTOFF)
    if matches:
        return matches[0]
    raise ValueError(f"unknown category {tag!r} (expected one of: {', '.join(CATEGORIES)})")


def coarse_group(category: str) -> str:
    """The I2P coarse group of a category (``"weapons"`` -> ``"illegal activity"``)."""
    return _GROUP_OF[normalize_category(category)]
