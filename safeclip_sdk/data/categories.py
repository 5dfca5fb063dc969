"""Unsafe-content categories: the user's own labels, with the 20 ViSU categories and their 7 I2P
coarse groups recognised.

A row's category is any non-empty string (``self-harm``, ``gore``, ``nsfw``, ``extremism``).
Names of the 20 ViSU categories and the 7 coarse groups are recognised whatever their case,
spacing or ``_``/``-`` and through small misspellings (``Humilation``, ``drug_use``); they are
stored under their canonical name and grouped in reports. Any other label is kept as it is
and reported under its own name.
"""

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
_GROUP_OF.update({group: group for group in COARSE_GROUPS})


def _key(tag: str) -> str:
    return re.sub(r"[\s_\-]+", " ", tag).strip().lower()


_CANONICAL = {_key(name): name for name in (*CATEGORIES, *COARSE_GROUPS)}

# A misspelling is repaired only when it is this close to a known name and at least this long:
# "humilation" -> "humiliation", while short or distinct labels ("hat", "gore") stay as they are.
_SPELLING_CUTOFF = 0.85
_SPELLING_MIN_LENGTH = 5


def normalize_category(tag: str) -> str:
    """The canonical name of a known category or coarse group, else the label itself (stripped).

    ``"Drug_Use"`` -> ``"drug use"``, ``"Humilation"`` -> ``"humiliation"``, ``"Self Harm"`` ->
    ``"self-harm"``, ``"gore"`` -> ``"gore"``. Raises ``ValueError`` for an empty label.
    """
    label = str(tag).strip()
    if not label:
        raise ValueError("empty category")
    key = _key(label)
    if key in _CANONICAL:
        return _CANONICAL[key]
    if len(key) >= _SPELLING_MIN_LENGTH:
        matches = difflib.get_close_matches(key, list(_CANONICAL), n=1, cutoff=_SPELLING_CUTOFF)
        if matches:
            return _CANONICAL[matches[0]]
    return label


def is_known_category(category: str) -> bool:
    """Whether a label is one of the 20 ViSU categories or 7 coarse groups (after normalising)."""
    return normalize_category(category) in _GROUP_OF


def coarse_group(category: str) -> str:
    """The I2P coarse group of a category (``"weapons"`` -> ``"illegal activity"``); a coarse
    group's name is its own group, and any other label is a group of its own."""
    name = normalize_category(category)
    return _GROUP_OF.get(name, name)
