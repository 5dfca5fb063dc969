"""The embedding spaces: how items and queries are embedded, stored, searched and compared."""

import math

import numpy as np
import pytest
import torch

from safeclip_sdk.errors import ModelLoadError
from safeclip_sdk.methods.hysac import lorentz as L
from safeclip_sdk.methods.hysac.space import LORENTZ, lorentz_space
from safeclip_sdk.model.spaces import cosine_space, space_from_dict

SPACE = lorentz_space(16, curvature=0.7, text_scale=0.3, image_scale=0.2)


def random_points(count, dim=16, seed=0, spread=1.5):
    generator = torch.Generator().manual_seed(seed)
    return L.exp_map0(spread * torch.randn(count, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim),
                      SPACE.curvature).numpy()


def test_lorentz_embed_is_exp_map0_of_the_scaled_features():
    features = torch.randn(5, 16)
    text, image = SPACE.embed(features, "text"), SPACE.embed(features, "image")
    torch.testing.assert_close(text, L.exp_map0(0.3 * features, 0.7))
    # the distance from the origin is |scale * f|: the scale differs per modality
    torch.testing.assert_close(L.distance_to_origin(image, 0.7), 0.2 * features.norm(dim=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="modality"):
        SPACE.embed(features, "audio")


def test_stored_and_query_vectors_put_the_time_component_first():
    points = random_points(4)
    stored, query = SPACE.to_stored(points), SPACE.to_query(points)
    assert SPACE.stored_dim == 17 and SPACE.distance == "dot"
    assert stored.shape == query.shape == (4, 17)
    time = np.sqrt(1 / 0.7 + (points ** 2).sum(axis=1))
    np.testing.assert_allclose(stored[:, 0], time, rtol=1e-6)
    np.testing.assert_allclose(query[:, 0], -time, rtol=1e-6)
    np.testing.assert_allclose(stored[:, 1:], points, rtol=1e-6)
    np.testing.assert_allclose(query[:, 1:], points, rtol=1e-6)
    # the dot product of a query with an item is their Lorentz inner product
    inner = L.pairwise_inner(torch.from_numpy(points), torch.from_numpy(points), 0.7).numpy()
    np.testing.assert_allclose(query.astype(np.float64) @ stored.T.astype(np.float64), inner, rtol=1e-5)


def test_dot_ranking_of_stored_vectors_equals_the_geodesic_ranking():
    items, queries = random_points(300, seed=1), random_points(40, seed=2)
    dot = SPACE.to_query(queries).astype(np.float64) @ SPACE.to_stored(items).T.astype(np.float64)
    geodesic = L.pairwise_distance(torch.from_numpy(queries), torch.from_numpy(items), SPACE.curvature).numpy()
    np.testing.assert_array_equal(np.argsort(-dot, axis=1, kind="stable")[:, :20],
                                  np.argsort(geodesic, axis=1, kind="stable")[:, :20])
    # the space's similarity is minus the geodesic distance
    np.testing.assert_allclose(SPACE.similarity(queries, items), -geodesic, atol=1e-9)


def test_unsafe_score_is_the_distance_from_the_origin():
    points = random_points(6, spread=3.0)
    expected = np.arcsinh(math.sqrt(0.7) * np.linalg.norm(points, axis=1)) / math.sqrt(0.7)
    np.testing.assert_allclose(SPACE.unsafe_score(points), expected, rtol=1e-6)
    assert SPACE.has_unsafe_score and not SPACE.normalizes
    cosine = cosine_space(16)
    assert cosine.unsafe_score(points) is None and cosine.normalizes and not cosine.has_unsafe_score


def test_cosine_space_keeps_unit_rows_under_cosine_distance():
    space = cosine_space(8)
    features = torch.randn(3, 8) * 5
    np.testing.assert_allclose(space.embed(features, "text").norm(dim=1).numpy(), 1.0, rtol=1e-6)
    values = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    assert (space.stored_dim, space.distance) == (8, "cosine")
    np.testing.assert_array_equal(space.to_stored(values), values)
    np.testing.assert_array_equal(space.to_query(values), values)


def test_space_from_dict_reads_both_kinds_and_round_trips():
    assert space_from_dict({"kind": "cosine", "dim": 8}, "x") == cosine_space(8)
    assert space_from_dict({"dim": 8}, "x") == cosine_space(8)
    values = SPACE.to_dict()
    assert values == {"kind": LORENTZ, "dim": 16, "curvature": 0.7, "text_scale": 0.3, "image_scale": 0.2}
    assert space_from_dict(values, "x") == SPACE


@pytest.mark.parametrize("values, message", [
    ({"kind": "lorentz", "dim": 4, "curvature": 1.0, "text_scale": 0.1}, "'embedding_space.image_scale'"),
    ({"kind": "lorentz", "dim": 4, "curvature": -1.0, "text_scale": 0.1, "image_scale": 0.1},
     "'embedding_space.curvature' must be a positive number, got -1.0"),
    ({"kind": "lorentz", "dim": 4, "curvature": float("nan"), "text_scale": 0.1, "image_scale": 0.1}, "curvature"),
    ({"kind": "poincare", "dim": 4}, "unknown embedding space 'poincare'"),
    ({"kind": "cosine", "dim": 0}, "positive integer 'dim'"),
])
def test_bad_space_records_are_one_line_errors(values, message):
    with pytest.raises(ModelLoadError, match="^safeclip.json: .*" + message.replace("(", r"\(")) as error:
        space_from_dict(values, "safeclip.json")
    assert "\n" not in str(error.value)
