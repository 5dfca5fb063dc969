"""PyTorch datasets over quadruplets: image tensors through the model's preprocess, text tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from . import images
from ..errors import DataError, ImageError
from .quadruplets import Quadruplet


def load_image_tensor(path: Path, preprocess: Callable, source: str = "", *,
               max_pixels: int = images.DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An image file as a preprocessed tensor, decoded by :func:`safeclip_sdk.data.images.load_image`
    (the Encoder's loader: EXIF orientation, mode conversion, pixel limit).

    Raises ``DataError`` ``"{source}: {path}: {what is wrong}"``, e.g. for a file deleted or
    damaged since :func:`~safeclip_sdk.data.load_dataset` checked it.
    """
    try:
        return preprocess(images.load_image(path, max_pixels=max_pixels))
    except ImageError as error:
        raise DataError(f"{source}: {error}" if source else str(error)) from error


def tokenize(tokenizer: Callable, text: str) -> torch.Tensor:
    """One caption as a LongTensor[context_length] from an open_clip tokenizer."""
    return tokenizer([text])[0]


class QuadrupletDataset(Dataset):
    """Quadruplets as dicts of tensors; the default collate batches them.

    ``dataset[i]`` is ``{"index", "safe_image", "safe_text", "unsafe_text"}`` plus
    ``"unsafe_image"`` when ``with_unsafe_images``.
    """

    def __init__(self, items: Sequence[Quadruplet], preprocess: Callable, tokenizer: Callable, *,
                 with_unsafe_images: bool) -> None:
        if with_unsafe_images:
            missing = next((item for item in items if item.unsafe_image is None), None)
            if missing is not None:
                raise DataError(f"{missing.source}: no unsafe image, but the dataset was asked "
                                f"for unsafe images")
        self.items = list(items)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.with_unsafe_images = with_unsafe_images

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        item = self.items[index]
        sample: dict[str, torch.Tensor | int] = {
            "index": index,
            "safe_image": load_image_tensor(item.safe_image, self.preprocess, item.source),
            "safe_text": tokenize(self.tokenizer, item.safe_text),
            "unsafe_text": tokenize(self.tokenizer, item.unsafe_text),
        }
        if self.with_unsafe_images:
            sample["unsafe_image"] = load_image_tensor(item.unsafe_image, self.preprocess, item.source)
        return sample


class ImageTextPairs(Dataset):
    """Plain (image, caption) pairs, ``{"image", "text"}``, for ordinary CLIP training."""

    def __init__(self, pairs: Sequence[tuple[Path, str]], preprocess: Callable,
                 tokenizer: Callable) -> None:
        self.pairs = list(pairs)
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    @classmethod
    def from_quadruplets(cls, items: Sequence[Quadruplet], preprocess: Callable, tokenizer: Callable,
                         include_unsafe: bool = True) -> ImageTextPairs:
        """Safe (image, caption) pairs, plus unsafe ones where an unsafe image exists."""
        pairs = [(item.safe_image, item.safe_text) for item in items]
        if include_unsafe:
            pairs += [(item.unsafe_image, item.unsafe_text) for item in items
                      if item.unsafe_image is not None]
        return cls(pairs, preprocess, tokenizer)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, text = self.pairs[index]
        return {"image": load_image_tensor(path, self.preprocess), "text": tokenize(self.tokenizer, text)}
