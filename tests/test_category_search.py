"""Per-category scores in a live collection: a reindex writes them into payloads, and a search
leaves out a category through the store's own filter (real local Qdrant and PostgreSQL with
pgvector, a tiny model with a fitted classifier)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.index.reindex import ReindexError, reindex
from safeclip_sdk.index.search import SafeSearch, SearchError, search
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import Point, VectorSpec
from safeclip_sdk.runtime.category_fit import fit_classifier
from safeclip_sdk.runtime.encoder import Encoder

from category_world import build_world
from reindex_world import everything

pytestmark = pytest.mark.slow
KEYS = {"blood": "blood", "drug use": "drug_use", "weapons": "weapons"}


@pytest.fixture(scope="module")
def model(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("category_search")
    world = build_world(root / "world")
    folder = root / "model"
    shutil.copytree(tiny_model_dir, folder)
    fit_classifier(folder, world["train"], world["val"], device="cpu")
    texts = []
    for split in ("val", "test"):
        rows = [json.loads(line) for line in world[split].read_text().splitlines()]
        texts += [text for row in rows for text in (row["safe_text"], row["unsafe_text"])]
    return {"folder": folder, "texts": list(dict.fromkeys(texts))}  # no two items tie in a ranking


@pytest.fixture
def store(tmp_path):
    opened = open_store(tmp_path / "db")
    yield opened
    opened.close()


@pytest.fixture(params=["qdrant", "pgvector"])
def any_store(request, tmp_path):
    opened = open_store(request.getfixturevalue("pg_dsn") if request.param == "pgvector" else tmp_path / "db")
    yield opened
    opened.close()


def _collection(store, encoder, texts, name="docs-original", alias="docs"):
    vectors = encoder.encode_text(texts)
    store.create_collection(name, {"": VectorSpec(vectors.shape[1], "cosine")})
    store.upsert(name, [Point(i, {"text": text}, {"": vectors[i]}) for i, text in enumerate(texts)])
    store.switch_alias(alias, name)


def test_reindex_writes_category_scores_and_search_excludes_a_category(any_store, model):
    store = any_store
    encoder = Encoder.load(model["folder"], backend="torch", device="cpu")
    texts = model["texts"]
    _collection(store, encoder, texts)
    reindex(store, "docs", encoder=encoder, text_field="text", category_scores=True, progress=False)

    classifier = encoder.category_classifier
    probabilities = classifier.probabilities(encoder.encode_text(texts), "text")
    points = everything(store, "docs")
    for point_id, point in points.items():
        stored = point.payload["safeclip_categories"]
        assert set(stored) == set(KEYS.values())
        for column, category in enumerate(classifier.classes[1:], start=1):
            assert stored[KEYS[category]] == pytest.approx(float(probabilities[point_id, column]), abs=1e-6)
    record = store.read_state("index:docs-safeclip-v1")
    assert record["category_field"] == "safeclip_categories" and record["category_keys"] == KEYS
    assert record["category_thresholds"] == classifier.thresholds("text")

    # the filtered top-k is the unfiltered ranking with the flagged items left out
    searcher = SafeSearch(store, "docs", encoder)
    query = texts[1]
    threshold = classifier.thresholds("text")["weapons"]
    weapons = probabilities[:, classifier.classes.index("weapons")]
    ranked = [hit.id for hit in searcher.search(query, limit=len(texts))]
    expected = [point_id for point_id in ranked if weapons[point_id] <= threshold][:5]
    assert weapons[ranked[0]] > threshold  # the query's own item is flagged and left out
    found = searcher.search(query, limit=5, exclude_categories=["weapons"])
    assert [hit.id for hit in found] == expected
    both = searcher.search(query, limit=len(texts), exclude_categories=["weapons", "Drug_Use"])
    drugs = probabilities[:, classifier.classes.index("drug use")]
    assert [hit.id for hit in both] == [i for i in ranked if weapons[i] <= threshold
                                        and drugs[i] <= classifier.thresholds("text")["drug use"]]

    with pytest.raises(SearchError, match="category 'gore' is not one of the categories scored in 'docs'"):
        searcher.search(query, exclude_categories=["gore"])
    assert [hit.id for hit in search(store, "docs", query, encoder=encoder, limit=5,
                                     exclude_categories=["weapons"])] == expected


def test_cli_search_excludes_a_category_and_refuses_what_it_cannot(store, model, tmp_path):
    db = tmp_path / "db"
    encoder = Encoder.load(model["folder"], backend="torch", device="cpu")
    _collection(store, encoder, model["texts"])
    _collection(store, encoder, model["texts"], name="plain-original", alias="plain")
    reindex(store, "docs", encoder=encoder, text_field="text", category_scores=True, progress=False)
    store.close()

    base = ["search", "--qdrant", str(db), "--model", str(model["folder"]), "--text", model["texts"][1]]
    result = CliRunner().invoke(cli, [*base, "--collection", "docs", "--exclude-category", "weapons", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["results"]
    threshold = encoder.category_classifier.thresholds("text")["weapons"]
    assert hits and all(hit["payload"]["safeclip_categories"]["weapons"] < threshold for hit in hits)

    unknown = CliRunner().invoke(cli, [*base, "--collection", "docs", "--exclude-category", "gore"])
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines() == [
        "Error: category 'gore' is not one of the categories scored in 'docs' (blood, drug use, weapons)"]
    unscored = CliRunner().invoke(cli, [*base, "--collection", "plain", "--exclude-category", "weapons"])
    assert unscored.exit_code == 1
    assert unscored.output.strip().splitlines() == [
        "Error: 'plain' has no per-category scores (reindex it with category_scores=True, --category-scores): "
        "drop the excluded categories"]


def test_reindex_with_category_scores_needs_a_fitted_classifier(store, tiny_model_dir):
    encoder = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    _collection(store, encoder, ["a photo of a dog", "a photo of a cat"])
    with pytest.raises(ReindexError, match="per-category scores need a model with a fitted category classifier"):
        reindex(store, "docs", encoder=encoder, text_field="text", category_scores=True, progress=False)
    assert "docs-safeclip-v1" not in store.list_collections() and store.alias_target("docs") == "docs-original"
