"""Safe-CLIP's settings: the ``safe_clip:`` section of a training config (``loss:`` in older files)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ...errors import SafeclipError
from ..losses import BASE_TEMPERATURE, validate_temperature

# The eight loss terms, in the reference order, with the reference weights.
REFERENCE_WEIGHTS = {
    "text_safe_cos": 0.1,             # 1 - cos(T(t),  T0(t))
    "text_unsafe_cos": 0.1,           # 1 - cos(T(t*), T0(t))
    "image_safe_cos": 0.1,            # 1 - cos(V(v),  V0(v))
    "image_unsafe_cos": 0.2,          # 1 - cos(V(v*), V0(v))
    "text_safe_contrastive": 0.25,    # contrastive(T(t),  V0(v))
    "text_unsafe_contrastive": 0.25,  # contrastive(T(t*), V0(v))
    "image_safe_contrastive": 0.25,   # contrastive(V(v),  T0(t))
    "image_unsafe_contrastive": 0.5,  # contrastive(V(v*), T0(t))
}

Normalization = Literal["sum", "none"]


@dataclass
class SafeClipConfig:
    # the contrastive terms' temperature: a number, or "base": the base model's own (0.01 for
    # OpenAI's CLIP, the published value; methods/losses.py says why it must match the base)
    tau: float | Literal["base"] = BASE_TEMPERATURE
    weights: dict[str, float] = field(default_factory=lambda: dict(REFERENCE_WEIGHTS))
    # "sum": every weight is divided once by the sum of all eight configured weights, so a term
    # has the same scale whether or not the dataset has unsafe images. "none": used as given.
    normalization: Normalization = "sum"

    POSITIVE: ClassVar[set[str]] = set()

    def validate(self, section: str) -> None:
        validate_temperature(self.tau, f"{section}.tau")
        validate_loss_weights(self.weights, f"{section}.weights")


def validate_loss_weights(weights: dict[str, float], where: str = "safe_clip.weights") -> dict[str, float]:
    """The eight Safe-CLIP weights as floats, in the reference order; each must be a number >= 0."""
    if not isinstance(weights, dict):
        raise SafeclipError(f"{where}: must be a mapping of term name to weight, got {weights!r}")
    known = list(REFERENCE_WEIGHTS)
    unknown = [name for name in weights if name not in REFERENCE_WEIGHTS]
    if unknown:
        raise SafeclipError(f"{where}: unknown term '{unknown[0]}' (known: {', '.join(known)})")
    missing = [name for name in known if name not in weights]
    if missing:
        raise SafeclipError(f"{where}: missing term '{missing[0]}' (set all eight; 0 disables a term)")
    for name in known:
        value = weights[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SafeclipError(f"{where}.{name}: must be a number >= 0, got {value!r}")
    return {name: float(weights[name]) for name in known}
