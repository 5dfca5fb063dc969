"""How every report writes its numbers: percentages, and the JSON round trip of report dataclasses."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np


def percent(hits) -> float:
    """Share of true values in %, rounded so reports read 29.0, not 28.999999999999996 (0.0 when empty)."""
    return share_percent(float(np.mean(hits))) if len(hits) else 0.0


def share_percent(share: float) -> float:
    """A fraction as a rounded percentage."""
    return round(100.0 * share, 6)


class JsonReport:
    """JSON round trip for the report dataclasses (evaluation, deployment comparison)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str):
        return cls(**json.loads(text))
