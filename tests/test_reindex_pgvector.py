"""The reindex test suite again, on PostgreSQL with pgvector (the real server of tests/conftest_pg.py).

The test functions are imported from the Qdrant-based files and run unchanged; only their
fixtures are replaced here: ``store`` is a PostgreSQL store on a fresh database, and ``folder``
is a folder whose ``"db"`` entry is that database's connection string (so ``open_store(folder /
"db")``, in the test or in the worker process it kills, opens PostgreSQL). The kill test runs its
worker from the test's temporary folder, so the report the worker writes next to "db" stays there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import tests.test_reindex_resume as resume_tests
from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.pgvector import PgVectorStore
from safeclip_sdk.index.reindex import reindex
from tests.reindex_world import everything, make_text_collection, without_reserved
from tests.test_reindex import (  # noqa: F401 - collected here with this module's fixtures
    test_an_unfinished_job_resumes_only_with_its_settings,
    test_complete_point_gives_an_application_point_the_safe_layout, test_dry_run_writes_nothing,
    test_full_mode_replaces_one_named_vector_and_carries_the_others, test_missing_collection_and_missing_field,
    test_plain_collection_is_adopted_only_when_asked_and_can_roll_back,
    test_follow_up_side_by_side_drops_the_old_safe_vector_of_points_whose_source_now_fails,
    test_rerun_of_a_finished_reindex_is_already_done_and_new_version_makes_v2, test_side_by_side_adds_safe_vectors_and_scores,
    test_side_by_side_keep_leaves_unreadable_points_without_a_safe_vector,
    test_unreadable_sources_are_left_out_and_counted_with_skip,
    test_unreadable_sources_keep_their_old_vectors_with_a_flag, test_vector_size_that_does_not_fit_the_model)
from tests.test_reindex_live import (  # noqa: F401
    test_complete_point_writes_through_a_follow_up_reindex_are_never_refused, test_three_way_rule_after_the_switch,
    test_writer_through_the_whole_reindex_loses_nothing)
from tests.test_reindex_resume import (  # noqa: F401
    test_failing_server_stops_with_one_line_and_a_rerun_completes, test_sigkill_at_random_moments_then_finish)

REPO = Path(__file__).resolve().parents[1]


class DatabaseFolder(type(Path())):
    """A temporary folder in which the entry ``"db"`` is a PostgreSQL connection string."""

    dsn: str

    def __truediv__(self, name):
        return self.dsn if name == "db" else super().__truediv__(name)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir)


@pytest.fixture
def store(pg_dsn):
    opened = open_store(pg_dsn)
    assert isinstance(opened, PgVectorStore)
    yield opened
    opened.close()


@pytest.fixture
def folder(tmp_path, pg_dsn, monkeypatch):
    monkeypatch.setattr(resume_tests, "REPO", tmp_path)  # the worker's working folder
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    path = DatabaseFolder(tmp_path)
    path.dsn = pg_dsn
    return path


def test_the_new_table_gets_its_hnsw_indexes_before_the_switch(store, encoder):
    payloads = make_text_collection(store, "docs-v0", 120, encoder.space.stored_dim, alias="docs")
    indexed_at_switch = {}
    switch = store.switch_alias

    def recording_switch(alias, collection):
        indexed_at_switch[collection] = store.hnsw_columns(collection)
        switch(alias, collection)

    store.switch_alias = recording_switch
    report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=32, progress=False)
    assert store.alias_target("docs") == report.target
    assert indexed_at_switch == {report.target: {"", "safe"}} == {report.target: set(store.vector_specs("docs"))}
    assert store.hnsw_columns("docs-v0") == set()  # the source was never finished by the reindex
    new = everything(store, "docs")
    assert {i: without_reserved(p.payload) for i, p in new.items()} == payloads


def test_cli_reindex_rollback_cleanup_with_pgvector(store, pg_dsn, tmp_path, encoder, tiny_model_dir, monkeypatch):
    make_text_collection(store, "docs-v0", 40, encoder.space.stored_dim, alias="docs")
    runner = CliRunner()
    base = ["reindex", "--pgvector", pg_dsn, "--table", "docs", "--model", str(tiny_model_dir),
            "--text-field", "text", "--no-progress"]
    with runner.isolated_filesystem(temp_dir=tmp_path):
        done = runner.invoke(cli, base + ["--batch-size", "16"])
        assert done.exit_code == 0, done.output
        assert "docs-v0 -> docs-safeclip-v1 (side-by-side), 40 points" in done.output
    assert store.hnsw_columns("docs") == {"", "safe"}
    monkeypatch.setenv("SAFECLIP_PG_DSN", pg_dsn)
    back = runner.invoke(cli, ["reindex", "rollback", "--pgvector", "--collection", "docs"])
    assert back.exit_code == 0 and "now points at docs-v0" in back.output
    assert store.alias_target("docs") == "docs-v0"
    secret = "never-on-the-command-line"
    with_password = pg_dsn.replace("postgres@", f"postgres:{secret}@")
    refused = runner.invoke(cli, ["reindex", "cleanup", "--pgvector", with_password, "--table", "docs"])
    assert refused.exit_code == 2 and "password on the command line is refused" in refused.output
    assert secret not in refused.output
    both = runner.invoke(cli, ["reindex", "cleanup", "--pgvector", pg_dsn, "--qdrant", str(tmp_path),
                               "--table", "docs"])
    assert both.exit_code == 2 and "exactly one of --qdrant TARGET and --pgvector DSN" in both.output
    gone = runner.invoke(cli, ["reindex", "cleanup", "--pgvector", pg_dsn, "--table", "docs"])
    assert gone.exit_code == 0 and "dropped docs-safeclip-v1" in gone.output
    assert store.list_collections() == ["docs-v0"]
