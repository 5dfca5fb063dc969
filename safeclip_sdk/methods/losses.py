"""Loss functions shared by the methods: symmetric InfoNCE and the mean cosine distance, and the
temperature of the contrastive terms.

Both losses take raw projection outputs and normalise them in at least fp32. Safe-CLIP's
eight-term loss lives in :mod:`safeclip_sdk.methods.safe_clip.losses`.

The temperature: a contrastive term against the FROZEN base encoders asks the fine-tuned tower for
a softmax as sharp as ``1/tau``. The published 0.01 is the temperature OpenAI's CLIP was trained
to (its logit scale reached its cap of 100); a base CLIP trained to another one (the demo's base:
1/0.07) is asked for a sharpness its own space never had, the term's gradients dwarf the others
and the tower drifts (measured in docs/methods.md). ``tau: base`` takes the base model's own
``1 / exp(logit_scale)``, which is 0.01 for OpenAI's CLIP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SafeclipError

BASE_TEMPERATURE = "base"


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



def validate_temperature(tau, key: str) -> None:
    """``tau`` must be a number > 0 or ``"base"``; SafeclipError naming ``key`` otherwise."""
    if tau == BASE_TEMPERATURE:
        return
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise SafeclipError(f"config key '{key}' must be a number greater than 0 or '{BASE_TEMPERATURE}' "
                            f"(the base model's own temperature), got {tau!r}")


def resolve_temperature(tau, base_model: torch.nn.Module, key: str) -> float:
    """``tau`` as a number: given, or for ``"base"`` the base CLIP's ``1 / exp(logit_scale)``."""
    validate_temperature(tau, key)
    if tau != BASE_TEMPERATURE:
        return float(tau)
    scale = getattr(base_model, "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        raise SafeclipError(f"config key '{key}': the base model has no logit_scale to take its temperature "
                            f"from; set a number (0.01 is OpenAI CLIP's)")
    return float(1.0 / scale.detach().float().exp().item())
