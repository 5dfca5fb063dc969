"""SafeR-CLIP's training objective: relative redirection, proximity redirection and preservation.

T, V are the encoders being fine-tuned, T0, V0 their FROZEN originals. Each unsafe quadruplet
(v*, t*) has a proximity target (the nearest safe caption of the training pool and its image,
see :mod:`.targets`). The terms:

- relative redirection, a softplus margin whose only negative is the item's own unsafe
  counterpart, so other plausible safe items are not pushed away:
  image side ``softplus((cos(V(v*), T0(t*)) - cos(V(v*), T0(target text))) / tau_r)``, text side
  ``softplus((cos(T(t*), V0(v*)) - cos(T(t*), V0(target image))) / tau_r)``. The published
  description writes it without a temperature (``tau_r = 1``); then a cosine difference near 0
  gives the term a gradient of about half a cosine's while the contrastive preservation terms are
  scaled by ``1/tau = 100``, and the redirection is not learned (measured: the term stays at
  ``softplus(0) = 0.69``). ``relative_tau`` (default 0.05, chosen by measurement on the demo world)
  puts it on the scale of the other cross-modal terms;
- proximity redirection within each modality: ``1 - cos(T(t*), T0(target text))`` and
  ``1 - cos(V(v*), V0(target image))``;
- Safe-CLIP's preservation: ``1 - cos(T(t), T0(t))``, ``1 - cos(V(v), V0(v))`` and the
  contrastive terms (T(t), V0(v)) and (V(v), T0(t)).

Both relative terms need the unsafe image (the text side uses V0(v*) as its negative), so a
text-only dataset trains with the text proximity and the preservation terms only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import SafeclipError
from ..losses import contrastive_loss, cosine_distance

NORMALIZATIONS = ("sum", "none")

# Term name -> (kind, inputs). Inputs name SaferClipEmbeddings fields: the trained embedding first.
TERMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image_relative": ("relative", ("image_unsafe", "ref_text_target", "ref_text_unsafe")),
    "text_relative": ("relative", ("text_unsafe", "ref_image_target", "ref_image_unsafe")),
    "text_proximity": ("cos", ("text_unsafe", "ref_text_target")),
    "image_proximity": ("cos", ("image_unsafe", "ref_image_target")),
    "text_safe_cos": ("cos", ("text_safe", "ref_text_safe")),
    "image_safe_cos": ("cos", ("image_safe", "ref_image_safe")),
    "text_safe_contrastive": ("contrastive", ("text_safe", "ref_image_safe")),
    "image_safe_contrastive": ("contrastive", ("image_safe", "ref_text_safe")),
}


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity, computed in at least fp32."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return F.cosine_similarity(a.to(dtype), b.to(dtype), dim=-1, eps=1e-12)


def relative_redirection_loss(anchor: Tensor, positive: Tensor, negative: Tensor, tau: float = 1.0) -> Tensor:
    """Mean over rows of ``softplus((cos(anchor, negative) - cos(anchor, positive)) / tau)``."""
    return F.softplus((_cosine(anchor, negative) - _cosine(anchor, positive)) / tau).mean()


@dataclass
class SaferClipEmbeddings:
    """One batch encoded by the trainable (T, V) and frozen (T0, V0) encoders.

    ``*_target`` rows belong to each quadruplet's proximity target; the frozen ones are
    detached by the loss whatever the caller passes.
    """

    text_unsafe: Tensor                     # T(t*)
    text_safe: Tensor                       # T(t)
    ref_text_safe: Tensor                   # T0(t)
    ref_image_safe: Tensor                  # V0(v)
    ref_text_target: Tensor                 # T0(target caption)
    ref_image_target: Tensor | None = None  # V0(target image); only the unsafe-image terms use it
    ref_text_unsafe: Tensor | None = None   # T0(t*); the image-side negative
    image_safe: Tensor | None = None        # V(v); None when the image tower is not trained
    image_unsafe: Tensor | None = None      # V(v*); None when the dataset has no unsafe images
    ref_image_unsafe: Tensor | None = None  # V0(v*); the text-side negative


_TRAINED = {"text_unsafe", "text_safe", "image_safe", "image_unsafe"}


class SaferClipLoss(torch.nn.Module):
    """The weighted sum of SafeR-CLIP's eight terms (names in ``TERMS``).

    The published description gives no weights, so all default to 1. With
    ``normalization="sum"`` each weight is divided once by the sum of all eight; terms whose
    inputs are missing from the batch are left out of the total.
    """

    def __init__(self, weights: dict[str, float] | None = None, *, tau: float = 0.01,
                 normalization: str = "sum", relative_tau: float = 1.0):
        super().__init__()
        for name, value in (("tau", tau), ("relative_tau", relative_tau)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise SafeclipError(f"safer-clip {name}: must be a positive number, got {value!r}")
        self.tau = float(tau)
        self.relative_tau = float(relative_tau)
        values = _validated_weights(weights)
        if normalization == "sum":
            total = sum(values.values())
            if total <= 0:
                raise SafeclipError("safer-clip weights: all weights are zero, nothing to normalise by")
            values = {name: value / total for name, value in values.items()}
        elif normalization != "none":
            raise SafeclipError(f"safer-clip normalization: '{normalization}' is not one of "
                                f"{', '.join(NORMALIZATIONS)}")
        self._weights = values

    @property
    def effective_weights(self) -> dict[str, float]:
        """The weights applied to the terms, after normalisation."""
        return dict(self._weights)

    def forward(self, emb: SaferClipEmbeddings) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total and each computed term's unweighted, detached value."""
        terms: dict[str, Tensor] = {}
        for name, (kind, fields) in TERMS.items():
            inputs = [getattr(emb, field) for field in fields]
            if any(value is None for value in inputs):
                continue
            inputs = [value if field in _TRAINED else value.detach() for field, value in zip(fields, inputs)]
            if kind == "relative":
                terms[name] = relative_redirection_loss(*inputs, self.relative_tau)
            elif kind == "cos":
                terms[name] = cosine_distance(*inputs)
            else:
                terms[name] = contrastive_loss(*inputs, self.tau)
        total = sum(self._weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}


def _validated_weights(weights: dict[str, float] | None) -> dict[str, float]:
    if weights is None:
        return {name: 1.0 for name in TERMS}
    if not isinstance(weights, dict):
        raise SafeclipError(f"safer-clip weights: must be a mapping of term name to weight, got {weights!r}")
    unknown = [name for name in weights if name not in TERMS]
    if unknown:
        raise SafeclipError(f"safer-clip weights: unknown term '{unknown[0]}' (known: {', '.join(TERMS)})")
    values = {name: weights.get(name, 1.0) for name in TERMS}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SafeclipError(f"safer-clip weights.{name}: must be a number >= 0, got {value!r}")
    return {name: float(value) for name, value in values.items()}
