"""Loss functions shared by the methods: symmetric InfoNCE and the mean cosine distance.

Both take raw projection outputs and normalise them in at least fp32. Safe-CLIP's eight-term
loss lives in :mod:`safeclip_sdk.methods.safe_clip.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _normalized(x: Tensor) -> Tensor:
    """L2-normalised rows, computed in at least fp32 (autocast may hand over fp16/bf16)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


def contrastive_loss(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` matches row ``i`` of ``b`` and no other row."""
    logits = _normalized(a) @ _normalized(b).T / tau
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch of ``1 - cos(a_i, b_i)``."""
    cos = (_normalized(a) * _normalized(b)).sum(dim=-1)
    return (1.0 - cos).mean()

