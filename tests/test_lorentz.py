"""Lorentz-model operations: identities, metric axioms, cones, gradients and the dot-product form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safeclip_sdk.methods.hysac import lorentz as L

CURVATURES = [0.1, 1.0, 7.5]


def _points(n: int, dim: int, scale: float, curv: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return L.exp_map0(torch.randn(n, dim, generator=generator) * scale, curv)


def _reference_distance(x: torch.Tensor, y: torch.Tensor, curv: float) -> torch.Tensor:
    """The textbook formula acosh(-c <x, y>_L) / sqrt(c), in float64 (no rewrite)."""
    x, y = x.double(), y.double()
    x_t = torch.sqrt(1 / curv + (x * x).sum(-1))
    y_t = torch.sqrt(1 / curv + (y * y).sum(-1))
    inner = x @ y.T - x_t[:, None] * y_t[None, :]
    return torch.acosh((-curv * inner).clamp_min(1.0)) / math.sqrt(curv)


@pytest.mark.parametrize("curv", CURVATURES)
def test_log_map0_inverts_exp_map0(curv):
    # sqrt(c)|v| from 1e-6 to 8, below the saturation of exp_map0
    direction = torch.nn.functional.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    v = direction * torch.logspace(-6, math.log10(8.0), 64)[:, None] / math.sqrt(curv)
    x = L.exp_map0(v, curv)
    torch.testing.assert_close(L.log_map0(x, curv), v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(L.exp_map0(L.log_map0(x, curv), curv), x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("curv", CURVATURES)
def test_distance_to_origin_is_the_norm_of_log_map0(curv):
    v = torch.randn(32, 8) / math.sqrt(curv)
    x = L.exp_map0(v, curv)
    d0 = L.distance_to_origin(x, curv)
    torch.testing.assert_close(d0, torch.linalg.vector_norm(L.log_map0(x, curv), dim=-1))
    torch.testing.assert_close(d0, torch.linalg.vector_norm(v, dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d0, L.distance(x, torch.zeros_like(x), curv), rtol=1e-5, atol=1e-6)


def test_time_component_puts_points_on_the_hyperboloid():
    curv = 2.5
    x = _points(10, 6, 1.0, curv).double()
    x_t = L.time_component(x, curv)
    torch.testing.assert_close((x * x).sum(-1) - x_t * x_t, torch.full((10,), -1 / curv, dtype=torch.float64))
    torch.testing.assert_close(L.lorentz_inner(x, x, curv), torch.full((10,), -1 / curv, dtype=torch.float64))
    torch.testing.assert_close(L.pairwise_inner(x, x, curv).diagonal(), L.lorentz_inner(x, x, curv))


@pytest.mark.parametrize("curv", CURVATURES)
def test_pairwise_distance_is_a_metric(curv):
    x = _points(48, 12, 0.8 / math.sqrt(curv), curv)
    d = L.pairwise_distance(x, x, curv)
    assert torch.all(d >= 0)
    torch.testing.assert_close(d, d.T, rtol=0, atol=1e-6)
    # fp32 matrix products leave ~1e-7 c |x|^2 of rounding in w, i.e. up to ~1e-3 |x| in d
    assert torch.all(d.diagonal() <= 1e-3 * torch.linalg.vector_norm(x, dim=-1))
    assert L.pairwise_distance(x.double(), x.double(), curv).diagonal().max() < 1e-6
    # triangle inequality over all triples
    violation = d[:, None, :] - (d[:, :, None] + d[None, :, :])
    assert violation.max() < 1e-4


@pytest.mark.parametrize("curv", CURVATURES)
def test_distances_match_the_textbook_formula(curv):
    x = _points(20, 10, 1.0 / math.sqrt(curv), curv, seed=1)
    y = _points(30, 10, 1.0 / math.sqrt(curv), curv, seed=2)
    expected = _reference_distance(x, y, curv)
    torch.testing.assert_close(L.pairwise_distance(x.double(), y.double(), curv), expected)
    torch.testing.assert_close(L.pairwise_distance(x, y, curv).double(), expected, rtol=1e-4, atol=1e-4)
    rows = L.distance(x[:, None, :].expand(20, 30, 10), y[None, :, :].expand(20, 30, 10), curv)
    torch.testing.assert_close(rows.double(), expected, rtol=1e-4, atol=1e-4)


def test_elementwise_distance_is_exactly_zero_for_identical_points():
    x = _points(16, 8, 3.0, 1.0)
    assert torch.equal(L.distance(x, x, 1.0), torch.zeros(16))


def test_exterior_angle_along_and_against_the_geodesic():
    curv = 1.3
    direction = torch.nn.functional.normalize(torch.randn(5, 7), dim=-1)
    near = L.exp_map0(0.6 * direction, curv)
    far = L.exp_map0(1.5 * direction, curv)
    # far lies straight outward from near: angle 0 (up to the acos clamp, sqrt(2 * 1e-6))
    assert L.exterior_angle(near, far, curv).max() < 2e-3
    # near lies back towards the origin from far: angle pi
    assert (L.exterior_angle(far, near, curv) - math.pi).abs().max() < 2e-3
    # orthogonal offset in the tangent space gives an angle strictly between
    side = L.exp_map0(0.6 * direction + 0.5 * torch.nn.functional.normalize(torch.randn(5, 7), dim=-1), curv)
    angle = L.exterior_angle(near, side, curv)
    assert torch.all((angle > 0.1) & (angle < math.pi - 0.1))


def test_exterior_angle_matches_the_law_of_cosines():
    """At x, between the outward geodesic and the one to y: from the three side lengths."""
    curv = 0.7
    x = _points(12, 5, 1.0, curv, seed=3).double()
    y = _points(12, 5, 1.0, curv, seed=4).double()
    k = math.sqrt(curv)
    a, b, c = L.distance_to_origin(x, curv) * k, L.distance(x, y, curv) * k, L.distance_to_origin(y, curv) * k
    interior = torch.acos((torch.cosh(a) * torch.cosh(b) - torch.cosh(c)) / (torch.sinh(a) * torch.sinh(b)))
    torch.testing.assert_close(L.exterior_angle(x, y, curv), math.pi - interior, rtol=1e-6, atol=1e-6)


def test_half_aperture():
    curv, radius = 2.0, 0.1
    norms = torch.tensor([0.0, 1e-6, 0.1, 0.5, 2.0, 40.0])
    x = norms[:, None] * torch.nn.functional.normalize(torch.ones(1, 4), dim=-1)
    aperture = L.half_aperture(x, curv, radius)
    inside = 2 * radius / (math.sqrt(curv) * norms) >= 1
    assert torch.allclose(aperture[inside], torch.tensor(math.pi / 2), atol=2e-3)
    expected = torch.asin(2 * radius / (math.sqrt(curv) * norms[~inside]))
    torch.testing.assert_close(aperture[~inside], expected)
    assert torch.all(aperture[1:] <= aperture[:-1])


def test_entailment_loss_is_zero_inside_the_cone_and_positive_outside():
    curv = 1.0
    direction = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    general = L.exp_map0(0.5 * direction, curv)
    inside = L.exp_map0(1.2 * direction, curv)
    outside = L.exp_map0(-1.2 * direction, curv)
    assert L.entailment_loss(general, inside, curv) == 0
    loss = L.entailment_loss(general, outside, curv)
    aperture = L.half_aperture(general, curv)
    torch.testing.assert_close(loss, (math.pi - aperture).mean(), atol=3e-3, rtol=0)
    # a wider cone (aperture_scale) forgives more
    assert L.entailment_loss(general, outside, curv, aperture_scale=1.5) < loss


def _all_ops(x: torch.Tensor, y: torch.Tensor, curv: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "pairwise_distance": L.pairwise_distance(x, y, curv).sum(),
        "distance": L.distance(x, y, curv).sum(),
        "distance_self": L.distance(x, x, curv).sum(),
        "distance_to_origin": L.distance_to_origin(x, curv).sum(),
        "exp_map0": L.exp_map0(x, curv).sum(),
        "log_map0": L.log_map0(x, curv).sum(),
        "half_aperture": L.half_aperture(x, curv).sum(),
        "exterior_angle": L.exterior_angle(x, y, curv).sum(),
        "entailment": L.entailment_loss(x, y, curv),
        "pairwise_inner": L.pairwise_inner(x, y, curv).sum(),
    }


@pytest.mark.parametrize("norm", [0.0, 1e-6, 1.0, 50.0])
@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_are_finite_near_and_far_from_the_origin(norm, autocast):
    torch.manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    base = norm * direction
    other = L.exp_map0(torch.randn(4, 16) * 0.5, 1.0)
    for name in _all_ops(base, other, torch.tensor(1.0)):
        x = base.clone().requires_grad_(True)
        curv = torch.tensor(1.0, requires_grad=True)
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                value = _all_ops(x.to(torch.bfloat16), other.to(torch.bfloat16), curv)[name]
        else:
            value = _all_ops(x, other, curv)[name]
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        value.backward()
        assert torch.isfinite(x.grad).all(), f"{name}: gradient wrt x at |x|={norm}"
        assert torch.isfinite(curv.grad), f"{name}: gradient wrt the curvature at |x|={norm}"


def test_autocast_computes_in_fp32():
    x = _points(16, 8, 1.0, 1.0, seed=5)
    y = _points(16, 8, 1.0, 1.0, seed=6)
    expected = L.pairwise_distance(x, y, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = L.pairwise_distance(x, y, 1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_exp_map0_saturates_instead_of_overflowing():
    x = L.exp_map0(torch.full((2, 4), 1e4), 1.0)
    assert torch.isfinite(x).all()
    assert torch.isfinite(L.pairwise_distance(x, x, 1.0)).all()
    torch.testing.assert_close(L.distance_to_origin(x, 1.0), torch.full((2,), L.MAX_SCALED_TANGENT_NORM))


@pytest.mark.parametrize("curv", CURVATURES)
def test_dot_product_ranking_equals_geodesic_ranking(curv):
    rng = np.random.default_rng(7)
    items = L.exp_map0(torch.from_numpy(rng.normal(size=(300, 16)) * 0.4 / math.sqrt(curv)), curv).numpy()
    queries = L.exp_map0(torch.from_numpy(rng.normal(size=(20, 16)) * 0.4 / math.sqrt(curv)), curv).numpy()
    stored, asked = L.item_vectors(items, curv), L.query_vectors(queries, curv)
    assert stored.shape == (300, 17) and asked.shape == (20, 17)
    dot = asked.astype(np.float64) @ stored.astype(np.float64).T
    geodesic = L.pairwise_distance(torch.from_numpy(queries).double(), torch.from_numpy(items).double(), curv).numpy()
    np.testing.assert_array_equal(np.argsort(-dot, axis=1, kind="stable"), np.argsort(geodesic, axis=1, kind="stable"))
    # the dot product is the Lorentz inner product, so the distance can be read back from it
    np.testing.assert_allclose(np.arccosh(np.maximum(-curv * dot, 1.0)) / math.sqrt(curv), geodesic, atol=2e-3)
