"""The Lorentz model of hyperbolic space with curvature ``-c``, as HySAC embeds into it.

A point lives on the upper sheet of the hyperboloid ``<x, x>_L = -1/c`` in ``D + 1`` dimensions.
Only its ``D`` space components are stored and passed around; the time component follows from
them, ``x_t = sqrt(1/c + |x|^2)``. The origin (the hyperboloid's vertex) has space components 0.

Every function here is vectorised over leading batch dimensions and computes in at least fp32
with autocast switched off, whatever precision the caller runs in: the cancellations below lose
all their digits in bf16. Two rewrites keep fp32 accurate:

- distances use ``w = -c<x, y>_L - 1`` computed without subtracting two numbers near 1, so
  ``acosh(1 + w)`` needs no clamp at 1 + eps and is exactly 0 for identical points;
- ``sinh(r)/r`` and ``asinh(r)/r`` in the exponential and logarithmic maps at the origin are
  evaluated with ``r`` kept away from 0, so the maps and their gradients are finite at the origin.

Curvature ``curv`` is the positive number ``c`` (a float or a scalar tensor, learnable or not).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

# Clamp for the arguments of asin/acos: keeps their derivatives finite (at most ~700).
ANGLE_EPS = 1e-6
# Norms below this are treated as this when they divide something.
MIN_NORM = 1e-7
# w = -c<x,y>_L - 1 below this is treated as this where 1/sqrt(w) appears (zero gradient there).
MIN_W = 1e-12
# exp_map0 saturates at sqrt(c)|v| = asinh(2^15) (distance ~11.1/sqrt(c) from the origin), so the
# time component and later inner products cannot overflow fp32.
MAX_SCALED_TANGENT_NORM = math.asinh(2.0 ** 15)


def full_precision(fn):
    """Run ``fn`` with autocast off on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def as_float(x: Tensor) -> Tensor:
    """``x`` in at least fp32 (fp16/bf16 become fp32, float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _sqrt_curv(curv: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(curv, dtype=like.dtype, device=like.device).sqrt()


def _scaled(x: Tensor, curv: float | Tensor) -> Tensor:
    """``sqrt(c) * x``: in these units the hyperboloid has curvature -1."""
    x = as_float(x)
    return x * _sqrt_curv(curv, x)


def _scaled_time(a: Tensor) -> Tensor:
    return torch.sqrt(1.0 + (a * a).sum(dim=-1))


@full_precision
def time_component(x: Tensor, curv: float | Tensor) -> Tensor:
    """The time component ``sqrt(1/c + |x|^2)`` of points ``x`` ``[..., D]``; shape ``[...]``."""
    x = as_float(x)
    return _scaled_time(_scaled(x, curv)) / _sqrt_curv(curv, x)


@full_precision
def lorentz_inner(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Row-wise Lorentz inner product ``x.y - x_t * y_t`` of matching points; shape ``[...]``."""
    x, y = as_float(x), as_float(y)
    return (x * y).sum(dim=-1) - time_component(x, curv) * time_component(y, curv)


@full_precision
def pairwise_inner(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Lorentz inner products between all rows of ``x`` ``[N, D]`` and ``y`` ``[M, D]``: ``[N, M]``."""
    x, y = as_float(x), as_float(y)
    return x @ y.T - time_component(x, curv)[:, None] * time_component(y, curv)[None, :]


def _acosh1p(w: Tensor) -> Tensor:
    """``acosh(1 + w)`` for ``w >= 0``, written with log1p; 0 (with gradient 0) below ``MIN_W``.

    The derivative ``1/sqrt(w (w + 2))`` is infinite at 0; below ``MIN_W`` the distance is under
    ``1.5e-6`` and is taken as exactly 0, the subgradient of a distance at its minimum.
    """
    w_safe = w.clamp_min(MIN_W)
    value = torch.log1p(w_safe + torch.sqrt(w_safe * (w_safe + 2.0)))
    return torch.where(w > MIN_W, value, torch.zeros_like(value))


@full_precision
def distance(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Geodesic distance between matching rows of ``x`` and ``y``; shape ``[...]``.

    Exactly 0 for identical points: ``w`` is built from ``x - y`` directly.
    """
    a, b = _scaled(x, curv), _scaled(y, curv)
    a_t, b_t = _scaled_time(a), _scaled_time(b)
    diff = a - b
    dt = (diff * (a + b)).sum(dim=-1) / (a_t + b_t)  # a_t - b_t without cancellation
    w = 0.5 * ((diff * diff).sum(dim=-1) - dt * dt)
    return _acosh1p(w) / _sqrt_curv(curv, a)


@full_precision
def pairwise_distance(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Geodesic distances between all rows of ``x`` ``[N, D]`` and ``y`` ``[M, D]``: ``[N, M]``.

    With ``a_t = 1 + p`` (``p = |a|^2 / (1 + a_t)``), ``w = p + q + pq - a.b``: the subtraction
    only cancels digits of order ``|a|^2``, not of order 1, so points near the origin keep their
    precision. The matrix product leaves a rounding error of about ``1e-7 c |x|^2`` in ``w`` in
    fp32, so the distance of a point to itself comes out below ``1e-3 |x|`` rather than exactly
    0 (use :func:`distance` where matching rows must compare exactly).
    """
    a, b = _scaled(x, curv), _scaled(y, curv)
    p = (a * a).sum(dim=-1) / (1.0 + _scaled_time(a))
    q = (b * b).sum(dim=-1) / (1.0 + _scaled_time(b))
    w = p[:, None] + q[None, :] + p[:, None] * q[None, :] - a @ b.T
    return _acosh1p(w) / _sqrt_curv(curv, a)


@full_precision
def distance_to_origin(x: Tensor, curv: float | Tensor) -> Tensor:
    """Geodesic distance of points ``x`` ``[..., D]`` from the origin, ``asinh(sqrt(c)|x|)/sqrt(c)``."""
    a = _scaled(x, curv)
    return torch.asinh(torch.linalg.vector_norm(a, dim=-1)) / _sqrt_curv(curv, a)


@full_precision
def exp_map0(v: Tensor, curv: float | Tensor) -> Tensor:
    """Map tangent vectors ``v`` at the origin onto the hyperboloid (space components returned).

    ``x = sinh(r)/r * v`` with ``r = sqrt(c)|v|``; the point lies at distance ``|v|`` from the
    origin along direction ``v``. Saturates at ``r = MAX_SCALED_TANGENT_NORM``.
    """
    v = as_float(v)
    r = torch.linalg.vector_norm(_scaled(v, curv), dim=-1, keepdim=True)
    r_safe = r.clamp_min(MIN_NORM)
    return torch.sinh(r_safe.clamp_max(MAX_SCALED_TANGENT_NORM)) / r_safe * v


@full_precision
def log_map0(x: Tensor, curv: float | Tensor) -> Tensor:
    """Inverse of :func:`exp_map0`: the tangent vector at the origin pointing to ``x``.

    ``v = asinh(r)/r * x`` with ``r = sqrt(c)|x|``, so ``|v|`` is the distance to the origin.
    """
    x = as_float(x)
    r = torch.linalg.vector_norm(_scaled(x, curv), dim=-1, keepdim=True)
    r_safe = r.clamp_min(MIN_NORM)
    return torch.asinh(r_safe) / r_safe * x


@full_precision
def half_aperture(x: Tensor, curv: float | Tensor, min_radius: float = 0.1) -> Tensor:
    """Half-aperture ``asin(2K / (sqrt(c)|x|))`` of the entailment cone at ``x``; shape ``[...]``.

    ``K = min_radius``: within ``2K / sqrt(c)`` of the origin the cone is the whole half-space
    (aperture pi/2, clamped just below).
    """
    r = torch.linalg.vector_norm(_scaled(x, curv), dim=-1).clamp_min(MIN_NORM)
    return torch.asin((2.0 * min_radius / r).clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS))


@full_precision
def exterior_angle(x: Tensor, y: Tensor, curv: float | Tensor) -> Tensor:
    """Exterior angle at ``x`` of the triangle (origin, ``x``, ``y``), in ``[0, pi]``; shape ``[...]``.

    0 when ``y`` lies straight outward from ``x`` along the geodesic from the origin through ``x``.
    By the hyperbolic law of cosines, in units where the curvature is -1:
    ``cos(phi) = (b_t - z a_t) / (|a| sqrt(z^2 - 1))`` with ``z = -<a, b>_L = 1 + w``.
    """
    a, b = _scaled(x, curv), _scaled(y, curv)
    a_t, b_t = _scaled_time(a), _scaled_time(b)
    diff = b - a
    dt = (diff * (a + b)).sum(dim=-1) / (a_t + b_t)  # b_t - a_t
    w = (0.5 * ((diff * diff).sum(dim=-1) - dt * dt)).clamp_min(0.0)
    numerator = dt - w * a_t
    denominator = (torch.linalg.vector_norm(a, dim=-1).clamp_min(MIN_NORM)
                   * torch.sqrt((w * (w + 2.0)).clamp_min(MIN_W)))
    cosine = (numerator / denominator).clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS)
    return torch.acos(cosine)


@full_precision
def entailment_loss(general: Tensor, specific: Tensor, curv: float | Tensor,
                    min_radius: float = 0.1, aperture_scale: float = 1.0) -> Tensor:
    """Mean of ``max(0, phi(general, specific) - aperture_scale * omega(general))`` over rows.

    Zero when every ``specific[i]`` lies inside the entailment cone of ``general[i]``: the
    general point is nearer the origin and the specific one further out in its direction.
    """
    angle = exterior_angle(general, specific, curv)
    aperture = half_aperture(general, curv, min_radius)
    return torch.relu(angle - aperture_scale * aperture).mean()


def item_vectors(x: np.ndarray, curv: float) -> np.ndarray:
    """Points ``[N, D]`` as vectors to store under DOT distance: ``[x_t, x]``, ``[N, D + 1]``.

    With queries from :func:`query_vectors`, ``dot = <x, q>_L``; the geodesic distance
    ``acosh(-c * dot) / sqrt(c)`` decreases as the dot product grows, so a vector database's
    DOT ranking is the geodesic ranking.
    """
    x = np.asarray(x, dtype=np.float64)
    x_t = np.sqrt(1.0 / curv + np.einsum("nd,nd->n", x, x))
    return np.concatenate([x_t[:, None], x], axis=1).astype(np.float32)


def query_vectors(q: np.ndarray, curv: float) -> np.ndarray:
    """Query points ``[N, D]`` as vectors to search with under DOT distance: ``[-q_t, q]``."""
    stored = item_vectors(q, curv)
    stored[:, 0] *= -1.0
    return stored
