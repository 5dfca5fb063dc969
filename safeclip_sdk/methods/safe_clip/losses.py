"""Safe-CLIP's training objective: eight weighted cosine and contrastive terms.

The trainable encoders T, V are pulled towards the FROZEN original encoders T0, V0: unsafe inputs
towards where their safe counterparts were (redirection), safe inputs towards where they already
were (preservation). Every term takes raw projection outputs and normalises them itself.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import SafeclipError
from ..losses import contrastive_loss, cosine_distance
from .config import Normalization, SafeClipConfig, validate_loss_weights

NORMALIZATIONS = typing.get_args(Normalization)


@dataclass
class SafeClipEmbeddings:
    """One batch of quadruplets encoded by the trainable (T, V) and frozen (T0, V0) encoders."""

    text_safe: Tensor                   # T(t)
    text_unsafe: Tensor                 # T(t*)
    ref_text_safe: Tensor               # T0(t)
    ref_image_safe: Tensor              # V0(v)
    image_safe: Tensor | None = None    # V(v); None when the image tower is not trained
    image_unsafe: Tensor | None = None  # V(v*); None when the dataset has no unsafe images


def _term_inputs(emb: SafeClipEmbeddings) -> dict[str, tuple[str, Tensor | None, Tensor]]:
    """Each term's (kind, trained embedding, frozen target), in the reference order.

    The targets are detached: the frozen encoders are never trained, whatever the caller passes.
    """
    ref_text, ref_image = emb.ref_text_safe.detach(), emb.ref_image_safe.detach()
    return {
        "text_safe_cos": ("cos", emb.text_safe, ref_text),
        "text_unsafe_cos": ("cos", emb.text_unsafe, ref_text),
        "image_safe_cos": ("cos", emb.image_safe, ref_image),
        "image_unsafe_cos": ("cos", emb.image_unsafe, ref_image),
        "text_safe_contrastive": ("contrastive", emb.text_safe, ref_image),
        "text_unsafe_contrastive": ("contrastive", emb.text_unsafe, ref_image),
        "image_safe_contrastive": ("contrastive", emb.image_safe, ref_text),
        "image_unsafe_contrastive": ("contrastive", emb.image_unsafe, ref_text),
    }


class SafeClipLoss(torch.nn.Module):
    """The weighted sum of Safe-CLIP's eight terms.

    With ``normalization="sum"`` every configured weight is divided once by the sum of all
    eight, so a term keeps the same scale whether or not the batch has unsafe images. Terms
    whose trained embedding is missing (text-only mode) are left out of the total.
    """

    def __init__(self, config: SafeClipConfig):
        super().__init__()
        self.tau = _validated_tau(config.tau)
        weights = validate_loss_weights(config.weights)
        if config.normalization == "sum":
            total = sum(weights.values())
            if total <= 0:
                raise SafeclipError("safe_clip.weights: all weights are zero, nothing to normalise by")
            weights = {name: value / total for name, value in weights.items()}
        elif config.normalization != "none":
            raise SafeclipError(f"safe_clip.normalization: '{config.normalization}' is not one of "
                                f"{', '.join(NORMALIZATIONS)}")
        self._weights = weights

    @property
    def effective_weights(self) -> dict[str, float]:
        """The weights applied to the terms, after normalisation."""
        return dict(self._weights)

    def forward(self, emb: SafeClipEmbeddings) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total and each computed term's unweighted, detached value."""
        terms: dict[str, Tensor] = {}
        for name, (kind, trained, target) in _term_inputs(emb).items():
            if trained is None:
                continue
            terms[name] = (cosine_distance(trained, target) if kind == "cos"
                           else contrastive_loss(trained, target, self.tau))
        total = sum(self._weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}


def _validated_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise SafeclipError(f"safe_clip.tau: must be a positive number, got {tau!r}")
    return float(tau)
