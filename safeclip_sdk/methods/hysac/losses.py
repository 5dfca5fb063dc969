"""HySAC's training objective and the small module holding its learnable geometry.

Both towers embed into the Lorentz model, ``x = exp_map0(alpha * f)`` with ``f`` the CLIP
projection output and ``alpha`` a learnable scale per modality. The loss has the reference's seven
terms and two radial terms of ours, with equal weights:

- four contrastive terms on logits ``-s * d(x_i, y_j)`` (``s`` a learnable logit scale, ``d`` the
  geodesic distance), for the pairs (T, V), (T*, V*), (T, V*) and (T*, V): every text matches
  its own quadruplet's images, safe or unsafe, and no other quadruplet's;
- three entailment terms: T entails V, T* entails V*, and V entails T* (the safe image is more
  generic than the unsafe text);
- two radial terms (not in the reference): each unsafe text and image lies at least
  ``radial_margin`` further from the origin than its own safe twin, ``max(0, m + d0(T) - d0(T*))``
  and the same for V and V*.

Together they order distances from the origin as T < V < T* < V*: safe content near the
origin, unsafe content further out, which is what classification and traversal use. Within one
modality that order is the order of the towers' output norms (``exp_map0`` keeps the tangent
norm, and the head's scale is one number per modality), so only the towers can learn it. The
entailment terms reach it indirectly and, from a base whose unsafe items have the SMALLER norms,
slowly (hundreds of steps on a small CLIP barely move the order); the radial terms pull on the
distance from the origin itself, with a gradient of constant size until the margin holds.
Weighting them 0 gives the reference objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import SafeclipError
from . import lorentz as L

# Term name -> (kind, first embedding, second embedding); for entailment the first entails the second.
TERMS: dict[str, tuple[str, str, str]] = {
    "contrastive_safe": ("contrastive", "text_safe", "image_safe"),
    "contrastive_unsafe": ("contrastive", "text_unsafe", "image_unsafe"),
    "contrastive_safe_text_unsafe_image": ("contrastive", "text_safe", "image_unsafe"),
    "contrastive_unsafe_text_safe_image": ("contrastive", "text_unsafe", "image_safe"),
    "entailment_safe": ("entailment", "text_safe", "image_safe"),
    "entailment_unsafe": ("entailment", "text_unsafe", "image_unsafe"),
    "entailment_safe_image_unsafe_text": ("entailment", "image_safe", "text_unsafe"),
    "radial_text": ("radial", "text_safe", "text_unsafe"),
    "radial_image": ("radial", "image_safe", "image_unsafe"),
}


@L.full_precision
def lorentz_contrastive_loss(x: Tensor, y: Tensor, curv: float | Tensor, logit_scale: float | Tensor) -> Tensor:
    """Symmetric InfoNCE with logits ``-logit_scale * d(x_i, y_j)``: row ``i`` matches row ``i``."""
    logits = -logit_scale * L.pairwise_distance(x, y, curv)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@L.full_precision
def radial_margin_loss(safe: Tensor, unsafe: Tensor, curv: float | Tensor, margin: float) -> Tensor:
    """Mean of ``max(0, margin + d0(safe_i) - d0(unsafe_i))``: each unsafe point at least ``margin``
    further from the origin than its own safe twin."""
    return torch.relu(margin + L.distance_to_origin(safe, curv) - L.distance_to_origin(unsafe, curv)).mean()


@dataclass
class HySACEmbeddings:
    """One batch of quadruplets as points on the hyperboloid (space components ``[B, D]``)."""

    text_safe: Tensor                   # T
    image_safe: Tensor                  # V
    text_unsafe: Tensor                 # T*
    image_unsafe: Tensor | None = None  # V*; None when the dataset has no unsafe images


def hysac_loss(emb: HySACEmbeddings, curv: float | Tensor, logit_scale: float | Tensor, *,
               weights: dict[str, float] | None = None, min_radius: float = 0.1,
               aperture_scale: float = 1.0, radial_margin: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted total of the terms and each computed term's detached value.

    ``weights`` (each term 1 unless given) are divided once by the sum of all of them, so a term keeps
    its scale whether or not the batch has unsafe images; terms that need ``image_unsafe`` are
    left out when it is None.
    """
    weights = _normalized_weights(weights)
    terms: dict[str, Tensor] = {}
    for name, (kind, first, second) in TERMS.items():
        a, b = getattr(emb, first), getattr(emb, second)
        if a is None or b is None:
            continue
        if kind == "contrastive":
            terms[name] = lorentz_contrastive_loss(a, b, curv, logit_scale)
        elif kind == "entailment":
            terms[name] = L.entailment_loss(a, b, curv, min_radius, aperture_scale)
        else:
            terms[name] = radial_margin_loss(a, b, curv, radial_margin)
    total = sum(weights[name] * value for name, value in terms.items())
    return total, {name: value.detach() for name, value in terms.items()}


def _normalized_weights(weights: dict[str, float] | None) -> dict[str, float]:
    if weights is None:
        return {name: 1.0 / len(TERMS) for name in TERMS}
    unknown = [name for name in weights if name not in TERMS]
    if unknown:
        raise SafeclipError(f"hysac weights: unknown term '{unknown[0]}' (known: {', '.join(TERMS)})")
    values = {name: weights.get(name, 1.0) for name in TERMS}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SafeclipError(f"hysac weights.{name}: must be a number >= 0, got {value!r}")
    total = sum(values.values())
    if total <= 0:
        raise SafeclipError("hysac weights: all weights are zero, nothing to train")
    return {name: float(value) / total for name, value in values.items()}


class HySACHead(nn.Module):
    """HySAC's learnable geometry: curvature, one scale per modality and the logit scale.

    All three are stored as logarithms, which keeps them positive. Call :meth:`clamp_` after
    every optimizer step: the curvature stays within ``[curv_init / 10, curv_init * 10]``, the
    modality scales at most 1 (they may shrink feature norms, never grow them) and the logit
    scale at most ``max_logit_scale``. Train them in :meth:`parameter_group` (no weight decay).
    """

    def __init__(self, embed_dim: int, *, curv_init: float = 1.0, learn_curv: bool = True,
                 logit_scale_init: float = 1 / 0.07, max_logit_scale: float = 100.0,
                 min_radius: float = 0.1, aperture_scale: float = 1.0, radial_margin: float = 0.1,
                 weights: dict[str, float] | None = None):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise SafeclipError(f"hysac embed_dim: must be a positive integer, got {embed_dim!r}")
        _check_positive("curv_init", curv_init)
        _check_positive("max_logit_scale", max_logit_scale)
        _check_positive("logit_scale_init", logit_scale_init)
        _check_positive("min_radius", min_radius)
        _check_positive("aperture_scale", aperture_scale)
        if isinstance(radial_margin, bool) or not isinstance(radial_margin, (int, float)) \
                or not math.isfinite(radial_margin) or radial_margin < 0:
            raise SafeclipError(f"hysac radial_margin: must be a number >= 0, got {radial_margin!r}")
        if logit_scale_init > max_logit_scale:
            raise SafeclipError(f"hysac logit_scale_init: {logit_scale_init} is above max_logit_scale "
                                f"{max_logit_scale}")
        self.embed_dim = embed_dim
        self.curv_init = float(curv_init)
        self.max_logit_scale = float(max_logit_scale)
        self.min_radius = float(min_radius)
        self.aperture_scale = float(aperture_scale)
        self.radial_margin = float(radial_margin)
        _normalized_weights(weights)  # checked now, applied in every forward
        self.weights = None if weights is None else {name: float(value) for name, value in weights.items()}
        self.log_curv = nn.Parameter(torch.tensor(math.log(curv_init)), requires_grad=learn_curv)
        self.log_alpha_text = nn.Parameter(torch.tensor(-0.5 * math.log(embed_dim)))
        self.log_alpha_image = nn.Parameter(torch.tensor(-0.5 * math.log(embed_dim)))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))

    @property
    def curv(self) -> Tensor:
        return self.log_curv.exp()

    @property
    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp()

    def embed_text(self, features: Tensor) -> Tensor:
        """Text projection outputs ``[B, embed_dim]`` as points on the hyperboloid (fp32)."""
        return L.exp_map0(L.as_float(features) * self.log_alpha_text.exp(), self.curv)

    def embed_image(self, features: Tensor) -> Tensor:
        """Image projection outputs ``[B, embed_dim]`` as points on the hyperboloid (fp32)."""
        return L.exp_map0(L.as_float(features) * self.log_alpha_image.exp(), self.curv)

    def forward(self, text_safe: Tensor, image_safe: Tensor, text_unsafe: Tensor,
                image_unsafe: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """HySAC's loss on raw projection outputs: the total and each term's detached value."""
        emb = HySACEmbeddings(
            text_safe=self.embed_text(text_safe), image_safe=self.embed_image(image_safe),
            text_unsafe=self.embed_text(text_unsafe),
            image_unsafe=None if image_unsafe is None else self.embed_image(image_unsafe))
        return hysac_loss(emb, self.curv, self.logit_scale, weights=self.weights,
                          min_radius=self.min_radius, aperture_scale=self.aperture_scale,
                          radial_margin=self.radial_margin)

    def parameter_group(self) -> dict:
        """An optimizer parameter group with the trainable geometry and no weight decay."""
        return {"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": 0.0}

    @torch.no_grad()
    def clamp_(self) -> None:
        """Put every parameter back in its allowed range (call after each optimizer step)."""
        self.log_curv.clamp_(math.log(self.curv_init / 10.0), math.log(self.curv_init * 10.0))
        self.log_alpha_text.clamp_(max=0.0)
        self.log_alpha_image.clamp_(max=0.0)
        self.log_logit_scale.clamp_(max=math.log(self.max_logit_scale))

    def config(self) -> dict:
        """JSON values that rebuild this head, ``HySACHead(**config)``; the state dict holds the rest."""
        return {"embed_dim": self.embed_dim, "curv_init": self.curv_init,
                "learn_curv": self.log_curv.requires_grad, "max_logit_scale": self.max_logit_scale,
                "min_radius": self.min_radius, "aperture_scale": self.aperture_scale,
                "radial_margin": self.radial_margin, "weights": None if self.weights is None else dict(self.weights)}


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SafeclipError(f"hysac {name}: must be a positive number, got {value!r}")
