"""Confidence intervals of the rates an audit reports, in percent.

- :func:`wilson`: the Wilson score interval of a proportion (k of n probes). Unlike the normal
  approximation it stays inside [0, 100] and is not empty at 0 or n successes: 0 leaks in 30
  safe probes gives [0.0, 11.35], not [0, 0].
- :func:`bootstrap_mean`: a percentile bootstrap over probes of a per-probe value that is not a
  yes/no (the unsafe share of each probe's top-k results), resampled with a fixed seed so a
  report is reproducible.

Both are wide for small probe sets: at 200 probes a rate near 50% is known to about +-7 points,
near 10% to about +-4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: two-sided 95%
Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n``, in percent; (0, 100) when ``n`` is 0."""
    if n == 0:
        return 0.0, 100.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2)


def bootstrap_mean(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``values`` (fractions), in percent."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return 0.0, 100.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return round(100 * float(low), 2), round(100 * float(high), 2)
