"""SafeR-CLIP's settings: the ``safer_clip:`` section of a training config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..losses import BASE_TEMPERATURE, validate_temperature
from .curriculum import Curriculum
from .losses import TERMS, _validated_weights


@dataclass
class CurriculumConfig:
    """Easy-to-hard stages: stage ``k`` lasts ``epochs_per_stage[k]`` epochs and keeps the items
    whose similarity to their target is at least the ``quantiles[k]`` quantile; then all items."""

    enabled: bool = True
    quantiles: list[float] = field(default_factory=lambda: [2 / 3, 1 / 3])
    epochs_per_stage: list[int] = field(default_factory=lambda: [1, 1])

    def build(self) -> Curriculum:
        return Curriculum(quantiles=tuple(self.quantiles), epochs_per_stage=tuple(self.epochs_per_stage),
                          enabled=self.enabled)


@dataclass
class SaferClipConfig:
    # temperature of the two contrastive preservation terms: a number or "base", the base model's
    # own (0.01 for OpenAI's CLIP; see methods/losses.py)
    tau: float | Literal["base"] = BASE_TEMPERATURE
    # temperature of the two relative redirection terms (the paper's description has none, i.e. 1;
    # see losses.py for why it is not learned then)
    relative_tau: float = 0.05
    # the paper publishes no weights: every term 1, divided once by their sum ("sum") or as given ("none")
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TERMS, 1.0))
    normalization: Literal["sum", "none"] = "sum"
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    # where the proximity targets are cached (default: RUN/cache); keyed by the captions and the
    # frozen model's weights, so several runs on the same data and base model can share one folder
    cache_dir: str | None = None
    target_batch_size: int = 256  # captions per frozen-encoder call in the target pass

    POSITIVE: ClassVar[set[str]] = {"relative_tau"}
    AT_LEAST: ClassVar[dict[str, int]] = {"target_batch_size": 1}

    def validate(self, section: str) -> None:
        from ...errors import SafeclipError

        validate_temperature(self.tau, f"{section}.tau")
        try:
            _validated_weights(self.weights)
            self.curriculum.build()
        except SafeclipError as error:
            raise SafeclipError(f"{section}: {error}") from None
