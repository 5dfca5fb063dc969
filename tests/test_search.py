"""Safe search against real local Qdrant with the tiny model: the right top-1 is known by
construction (stored vectors are the model's own embeddings of the queries)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import MissingCollectionError, Point, VectorSpec
from safeclip_sdk.index.search import SafeSearch, SearchError, search
from safeclip_sdk.index.contract import DEFAULT_SIDE_BY_SIDE_MODE, QUERY_SIDE, SAFE

TEXTS = ["a red bicycle leaning on a wall", "two dogs playing in the snow", "a bowl of ramen with eggs",
         "an old lighthouse at dusk", "children flying a kite on a beach", "a violin on a wooden table"]
# the safe vectors of item i are the embeddings of text SHIFT[i]: a safe-mode search for TEXTS[j]
# finds the item whose safe vector is TEXTS[j], a query-side one the item whose original vector is
SHIFT = [2, 3, 4, 5, 0, 1]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def embedded(encoder):
    return encoder.space.to_stored(encoder.encode_text(TEXTS))


def _plain_collection(store, name, embedded, vector="image"):
    store.create_collection(name, {vector: VectorSpec(embedded.shape[1], "cosine")})
    store.upsert(name, [Point(i, {"caption": TEXTS[i]}, {vector: embedded[i]}) for i in range(len(TEXTS))])


def _side_by_side(store, alias, embedded, tiny_model_dir, encoder, threshold=None):
    physical = f"{alias}-safeclip-v1"
    dim = embedded.shape[1]
    store.create_collection(physical, {"image": VectorSpec(dim, "cosine"), "image_safe": VectorSpec(dim, "cosine")})
    store.upsert(physical, [Point(i, {"caption": TEXTS[i], "safeclip_shift": i / 10},
                                  {"image": embedded[i], "image_safe": embedded[SHIFT[i]]}) for i in range(len(TEXTS))])
    store.switch_alias(alias, physical)
    store.write_state(f"index:{physical}", {
        "mode": "side-by-side", "model": str(tiny_model_dir), "space": encoder.space.to_dict(),
        "vectors": {"image": "image_safe"}, "score_field": "safeclip_shift", "threshold": threshold})
    return physical


def _full(store, alias, embedded, tiny_model_dir, encoder, version=1):
    physical = f"{alias}-safeclip-v{version}"
    store.create_collection(physical, {"image": VectorSpec(embedded.shape[1], "cosine")})
    store.upsert(physical, [Point(i, {"caption": TEXTS[i]}, {"image": embedded[SHIFT[i]]}) for i in range(len(TEXTS))])
    store.switch_alias(alias, physical)
    store.write_state(f"index:{physical}", {
        "mode": "full", "model": str(tiny_model_dir), "space": encoder.space.to_dict(),
        "vectors": {"image": "image"}, "score_field": None, "threshold": None})
    return physical


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "db")
    yield opened
    opened.close()


def _source_of(j):
    """The item whose safe vector embeds TEXTS[j]."""
    return SHIFT.index(j)


def test_query_side_on_a_plain_collection(store, encoder, embedded):
    _plain_collection(store, "photos", embedded)
    for j, text in enumerate(TEXTS):
        results = search(store, "photos", text, encoder=encoder, limit=3)
        assert results[0].id == j
        assert results[0].score == pytest.approx(1.0, abs=1e-4)
        assert results[0].payload == {"caption": text}
        assert results.mode == QUERY_SIDE and results.vector == "image" and results.collection == "photos"
    assert len(search(store, "photos", TEXTS[0], encoder=encoder, limit=4)) == 4


def test_side_by_side_defaults_to_the_configured_mode_and_can_search_either_vector(store, encoder, embedded,
                                                                                   tiny_model_dir):
    _side_by_side(store, "photos", embedded, tiny_model_dir, encoder)
    searcher = SafeSearch(store, "photos", encoder)
    assert searcher.mode == DEFAULT_SIDE_BY_SIDE_MODE
    assert searcher.physical == "photos-safeclip-v1"
    for j, text in enumerate(TEXTS):
        assert SafeSearch(store, "photos", encoder, mode=QUERY_SIDE).search(text)[0].id == j
        safe = SafeSearch(store, "photos", encoder, mode=SAFE).search(text)
        assert safe[0].id == _source_of(j) and safe.vector == "image_safe"
    # naming the safe vector means the safe mode
    named = SafeSearch(store, "photos", encoder, vector="image_safe")
    assert (named.mode, named.vector) == (SAFE, "image_safe")
    with pytest.raises(SearchError, match="holds safe embeddings"):
        SafeSearch(store, "photos", encoder, vector="image_safe", mode=QUERY_SIDE)


def test_max_score_filters_on_the_moderation_score(store, encoder, embedded, tiny_model_dir):
    _side_by_side(store, "photos", embedded, tiny_model_dir, encoder, threshold=0.25)
    searcher = SafeSearch(store, "photos", encoder, mode=QUERY_SIDE)
    # item 4 has score 0.4: filtered out below 0.35, so its own text finds another item
    results = searcher.search(TEXTS[4], limit=6, max_score=0.35)
    assert 4 not in [r.id for r in results]
    assert sorted(r.id for r in results) == [0, 1, 2, 3]
    assert all(r.payload["safeclip_shift"] < 0.35 for r in results)
    assert sorted(r.id for r in searcher.search(TEXTS[0], limit=6, max_score="threshold")) == [0, 1, 2]
    assert searcher.search(TEXTS[4], limit=6, max_score=0.45)[0].id == 4
    with pytest.raises(SearchError, match="must be a number"):
        searcher.search(TEXTS[0], max_score="high")


def test_max_score_without_a_score_field_is_a_clear_error(store, encoder, embedded, tiny_model_dir):
    _plain_collection(store, "plain", embedded)
    with pytest.raises(SearchError, match="no moderation score"):
        search(store, "plain", TEXTS[0], encoder=encoder, max_score=0.5)
    _full(store, "full", embedded, tiny_model_dir, encoder)
    with pytest.raises(SearchError, match="no moderation score"):
        search(store, "full", TEXTS[0], encoder=encoder, max_score=0.5)


def test_full_reindex_searches_the_safe_vectors_with_the_recorded_model(tmp_path, encoder, embedded, tiny_model_dir):
    store = open_store(tmp_path / "db")
    _full(store, "photos", embedded, tiny_model_dir, encoder)
    with pytest.raises(SearchError, match="fully reindexed"):
        SafeSearch(store, "photos", encoder, mode=QUERY_SIDE)
    store.close()
    # by target, without a model: the store is opened (and closed) and the recorded model loaded
    results = search(tmp_path / "db", "photos", TEXTS[1])
    assert results.mode == SAFE and results[0].id == _source_of(1)
    assert search(str(tmp_path / "db"), "photos", TEXTS[2], model=tiny_model_dir)[0].id == _source_of(2)


def test_a_searcher_follows_the_alias(store, encoder, embedded, tiny_model_dir):
    _plain_collection(store, "photos-v0", embedded)
    store.switch_alias("photos", "photos-v0")
    searcher = SafeSearch(store, "photos", encoder)
    assert searcher.search(TEXTS[3])[0].id == 3
    _full(store, "photos", embedded, tiny_model_dir, encoder, version=1)  # a reindex switched the alias
    results = searcher.search(TEXTS[3])
    assert (results.collection, results.mode) == ("photos-safeclip-v1", SAFE)
    assert results[0].id == _source_of(3)


def test_image_queries(store, encoder, tmp_path):
    colors = [(220, 20, 20), (20, 200, 40), (30, 40, 230), (240, 240, 30)]
    images = []
    for i, color in enumerate(colors):
        pixels = np.zeros((64, 64, 3), dtype=np.uint8)
        pixels[:, :] = color
        pixels[i * 16:(i + 1) * 16, :] = 255 - np.array(color, dtype=np.uint8)  # a stripe per image
        images.append(Image.fromarray(pixels))
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    vectors = encoder.space.to_stored(encoder.encode_image(paths))
    store.create_collection("pictures", {"": VectorSpec(vectors.shape[1], "cosine")})
    store.upsert("pictures", [Point(i, {"file": paths[i].name}, {"": vectors[i]}) for i in range(len(paths))])
    for i, path in enumerate(paths):
        assert search(store, "pictures", path, encoder=encoder)[0].id == i
    assert search(store, "pictures", images[2], encoder=encoder)[0].id == 2
    assert search(store, "pictures", paths[1].read_bytes(), encoder=encoder)[0].id == 1
    with pytest.raises(SearchError, match="is a text"):
        search(store, "pictures", 42, encoder=encoder)


def test_bad_input(store, encoder, embedded):
    with pytest.raises(MissingCollectionError, match="no collection or alias 'nowhere'"):
        search(store, "nowhere", TEXTS[0], encoder=encoder)
    with pytest.raises(MissingCollectionError):  # before trying to load the model
        search(store, "nowhere", TEXTS[0], model="/no/such/model")
    store.create_collection("small", {"image": VectorSpec(7, "cosine")})
    with pytest.raises(SearchError, match=f"has 7 dimensions, but the model's query vectors have {embedded.shape[1]}"):
        search(store, "small", TEXTS[0], encoder=encoder)
    store.create_collection("two", {"image": VectorSpec(embedded.shape[1], "cosine"),
                                    "text": VectorSpec(embedded.shape[1], "cosine")})
    with pytest.raises(SearchError, match="several vectors"):
        search(store, "two", TEXTS[0], encoder=encoder)
    assert search(store, "two", TEXTS[0], encoder=encoder, vector="text") == []
    with pytest.raises(SearchError, match="has no vector 'audio'"):
        search(store, "two", TEXTS[0], encoder=encoder, vector="audio")
    _plain_collection(store, "plain", embedded)
    with pytest.raises(SearchError, match="has no safe vectors"):
        search(store, "plain", TEXTS[0], encoder=encoder, mode=SAFE)
    with pytest.raises(SearchError, match="unknown search mode"):
        search(store, "plain", TEXTS[0], encoder=encoder, mode="fast")
    with pytest.raises(SearchError, match="name the safe model"):
        search(store, "plain", TEXTS[0])
    with pytest.raises(SearchError, match="empty"):
        search(store, "plain", "  ", encoder=encoder)


# --- command line ---

def test_cli_search_json_and_table(tmp_path, encoder, embedded, tiny_model_dir):
    store = open_store(tmp_path / "db")
    _side_by_side(store, "photos", embedded, tiny_model_dir, encoder, threshold=0.25)
    store.close()
    runner = CliRunner()
    args = ["search", "--qdrant", str(tmp_path / "db"), "--collection", "photos", "--model", str(tiny_model_dir)]
    result = runner.invoke(cli, [*args, "--text", TEXTS[1], "-k", "3", "--mode", "safe", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["mode"] == SAFE and printed["vector"] == "image_safe"
    assert printed["results"][0]["id"] == _source_of(1) and len(printed["results"]) == 3
    table = runner.invoke(cli, [*args, "--text", TEXTS[1], "--max-score", "threshold"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0] == "3 results from 'photos-safeclip-v1' (mode query-side, vector 'image')"
    assert lines[1].split() == ["#", "id", "score", "caption", "safeclip_shift"]
    assert lines[2].split()[:3] == ["1", "1", "1.0000"] and TEXTS[1] in lines[2]


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir):
    open_store(tmp_path / "db").close()
    runner = CliRunner()
    args = ["search", "--qdrant", str(tmp_path / "db"), "--collection", "nowhere", "--model", str(tiny_model_dir)]
    result = runner.invoke(cli, [*args, "--text", "a dog"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: qdrant edge {tmp_path / 'db'}: no collection or alias 'nowhere'"]
    both = runner.invoke(cli, [*args, "--text", "a dog", "--image", str(tiny_model_dir / "open_clip_config.json")])
    assert both.exit_code == 2 and "exactly one query" in both.output
    bad = runner.invoke(cli, [*args, "--text", "a dog", "--max-score", "lots"])
    assert bad.exit_code == 2 and "--max-score" in bad.output
