"""Datasets of safe/unsafe quadruplets: ViSU-Text, a generic JSONL format, and image loading."""

from .categories import CATEGORIES, COARSE_GROUPS, coarse_group, is_known_category, normalize_category
from .loading import load_dataset
from .quadruplets import BadRow, Quadruplet, QuadrupletSet
from .torch_dataset import ImageTextPairs, QuadrupletDataset

__all__ = [
    "BadRow",
    "CATEGORIES",
    "COARSE_GROUPS",
    "ImageTextPairs",
    "Quadruplet",
    "QuadrupletDataset",
    "QuadrupletSet",
    "coarse_group",
    "is_known_category",
    "load_dataset",
    "normalize_category",
]
