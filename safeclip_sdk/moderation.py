"""Moderation scores that need no extra model.

The shift score of an item is how far the safe model moved it from where the original model put
it: ``1 - cos(original embedding, safe embedding)``. Safe-CLIP's preservation terms keep safe
items in place while its redirection terms move unsafe ones, so a large shift marks content the
safe model treats as unsafe.
"""

from __future__ import annotations

import numpy as np


def shift_score(original: np.ndarray, safe: np.ndarray) -> np.ndarray:
    """``1 - cos`` between matching rows of two ``[N, D]`` arrays (0 = unmoved, up to 2)."""
    original = np.asarray(original, dtype=np.float32)
    safe = np.asarray(safe, dtype=np.float32)
    if original.shape != safe.shape:
        raise ValueError(f"shift_score needs arrays of one shape, got {original.shape} and {safe.shape}")
    norms = np.linalg.norm(original, axis=1) * np.linalg.norm(safe, axis=1)
    return 1.0 - np.sum(original * safe, axis=1) / np.maximum(norms, 1e-12)
