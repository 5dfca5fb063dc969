"""A reindex with a HySAC model: Lorentz points stored under DOT with one more dimension, and each
point's unsafe score (distance from the origin) in its payload, so a search can filter on it."""

from __future__ import annotations

import numpy as np
import pytest

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import DEFAULT_VECTOR, Point, VectorSpec
from safeclip_sdk.index.reindex import reindex
from safeclip_sdk.index.contract import UNSAFE_SCORE_FIELD
from safeclip_sdk.index.search import SafeSearch
from tests.reindex_world import everything


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "db")
    yield opened
    opened.close()


def test_side_by_side_stores_lorentz_points_and_the_unsafe_score(store, hysac_world, tiny_model_dir):
    hysac = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    base = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    texts = hysac_world["safe_texts"] + hysac_world["unsafe_texts"]
    store.create_collection("docs-original", {DEFAULT_VECTOR: VectorSpec(base.space.stored_dim, "cosine")})
    store.upsert("docs-original", [Point(i, {"text": text}, {DEFAULT_VECTOR: vector})
                                   for i, (text, vector) in enumerate(zip(texts, base.encode_text(texts)))])
    store.switch_alias("docs", "docs-original")

    report = reindex(store, "docs", encoder=hysac, text_field="text", batch_size=8, progress=False)

    specs = store.vector_specs(report.target)
    assert specs["safe"].size == hysac.space.dim + 1 and specs["safe"].distance == "dot"
    assert specs[DEFAULT_VECTOR].size == base.space.stored_dim                 # the original is kept as it was
    points = everything(store, "docs")
    embeddings = hysac.encode_text([points[i].payload["text"] for i in range(len(texts))])
    expected_scores = hysac.space.unsafe_score(embeddings)
    for i in range(len(texts)):
        np.testing.assert_allclose(points[i].vectors["safe"], hysac.space.to_stored(embeddings[i:i + 1])[0], atol=1e-5)
        assert points[i].payload[UNSAFE_SCORE_FIELD] == pytest.approx(expected_scores[i], rel=1e-5)
        assert "safeclip_shift" not in points[i].payload   # a cosine/Lorentz shift would be meaningless
    info = store.read_state(f"index:{report.target}")
    assert info["score_field"] == UNSAFE_SCORE_FIELD
    assert info["threshold"] == pytest.approx(hysac.inference.threshold("text"))

    # a search that filters on the recorded threshold returns only items classified safe
    search = SafeSearch(store, "docs", hysac, mode="safe")
    results = search.search(hysac_world["unsafe_texts"][0], limit=len(texts), max_score="threshold")
    assert results and all(result.payload[UNSAFE_SCORE_FIELD] < info["threshold"] for result in results)
    assert len(results) == int(np.sum(expected_scores < info["threshold"]))
