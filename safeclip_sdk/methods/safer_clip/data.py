"""Quadruplets with their proximity target: the caption (and image) of the nearest safe item."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...data.quadruplets import Quadruplet
from ...data.torch_dataset import load_image_tensor, tokenize


class WithProximityTargets(torch.utils.data.Dataset):
    """Each item of ``dataset`` plus ``target_text`` (tokens of the target caption) and, with
    ``with_target_images``, ``target_image``; ``indices[i]`` is item ``i``'s target in ``pool``."""

    def __init__(self, dataset, pool: Sequence[Quadruplet], indices: np.ndarray, preprocess, tokenizer, *,
                 with_target_images: bool):
        if len(indices) != len(dataset):
            raise ValueError(f"{len(indices)} targets for {len(dataset)} items")
        self.dataset, self.pool, self.indices = dataset, list(pool), np.asarray(indices)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.with_target_images = with_target_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        target = self.pool[int(self.indices[index])]
        sample["target_text"] = tokenize(self.tokenizer, target.safe_text)
        if self.with_target_images:
            sample["target_image"] = load_image_tensor(target.safe_image, self.preprocess, target.source)
        return sample
