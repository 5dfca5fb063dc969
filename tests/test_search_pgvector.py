"""Safe search on PostgreSQL with pgvector: the search tests of tests/test_search.py run with a
PostgreSQL store, and ``safeclip search --pgvector`` on the command line (where a password is
refused and ``--pgvector`` alone reads SAFECLIP_PG_DSN)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.index.search import search
from safeclip_sdk.index.contract import SAFE
from tests.test_search import TEXTS, _side_by_side, _source_of
from tests.test_search import (  # noqa: F401 - collected here with this module's fixtures
    embedded, test_a_searcher_follows_the_alias, test_bad_input, test_image_queries,
    test_max_score_filters_on_the_moderation_score, test_max_score_without_a_score_field_is_a_clear_error,
    test_query_side_on_a_plain_collection, test_side_by_side_defaults_to_the_configured_mode_and_can_search_either_vector)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, backend="torch", device="cpu")


@pytest.fixture
def store(pg_dsn):
    opened = open_store(pg_dsn)
    yield opened
    opened.close()


def test_cli_search_with_pgvector(store, pg_dsn, encoder, embedded, tiny_model_dir, monkeypatch):
    _side_by_side(store, "photos", embedded, tiny_model_dir, encoder, threshold=0.25)
    runner = CliRunner()
    query = ["--collection", "photos", "--model", str(tiny_model_dir), "--text", TEXTS[1], "-k", "3",
             "--mode", "safe", "--json"]
    result = runner.invoke(cli, ["search", "--pgvector", pg_dsn, *query])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["mode"] == SAFE and printed["vector"] == "image_safe"
    assert [r["id"] for r in printed["results"]] == [r.id for r in search(store, "photos", TEXTS[1], encoder=encoder,
                                                                          mode=SAFE, limit=3)]
    assert printed["results"][0]["id"] == _source_of(1)
    monkeypatch.setenv("SAFECLIP_PG_DSN", pg_dsn)
    from_env = runner.invoke(cli, ["search", "--pgvector", *query])
    assert from_env.exit_code == 0, from_env.output
    assert json.loads(from_env.output)["results"] == printed["results"]


def test_cli_store_options_are_checked(store, tmp_path, pg_dsn, monkeypatch):
    runner = CliRunner()
    query = ["--collection", "photos", "--text", "a dog"]
    secret = "s3cret-on-the-command-line"
    with_password = pg_dsn.replace("postgres@", f"postgres:{secret}@")
    refused = runner.invoke(cli, ["search", "--pgvector", with_password, *query])
    assert refused.exit_code == 2 and "password on the command line is refused" in refused.output
    assert secret not in refused.output
    in_query = runner.invoke(cli, ["search", "--pgvector", pg_dsn + f"&password={secret}", *query])
    assert in_query.exit_code == 2 and secret not in in_query.output
    both = runner.invoke(cli, ["search", "--pgvector", pg_dsn, "--qdrant", str(tmp_path / "db"), *query])
    assert both.exit_code == 2 and "exactly one of --qdrant TARGET and --pgvector DSN" in both.output
    neither = runner.invoke(cli, ["search", *query])
    assert neither.exit_code == 2 and "exactly one of" in neither.output
    monkeypatch.delenv("SAFECLIP_PG_DSN", raising=False)
    unset = runner.invoke(cli, ["search", "--pgvector", *query])
    assert unset.exit_code == 2 and "SAFECLIP_PG_DSN, which is not set" in unset.output
    missing = runner.invoke(cli, ["search", "--pgvector", pg_dsn, *query])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"Error: {store.name}: no collection or alias 'photos'"]
