"""What only the PostgreSQL store has, against the real server of tests/conftest_pg.py: the id key,
halfvec columns, HNSW and payload indexes, alias views under concurrent connections, lost
connections, and passwords that never show. The shared contract is in tests/test_store_suite.py."""

from __future__ import annotations

import logging
import threading
import traceback
import uuid

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import MissingCollectionError, Point, Range, StoreError, VectorSpec
from safeclip_sdk.integrations.pgvector import PgVectorStore
from safeclip_sdk.integrations.pgvector_schema import UUID_OFFSET, decode_id, encode_id


@pytest.fixture
def store(pg_dsn):
    opened = open_store(pg_dsn, retries=2, retry_base_delay=0.01, retry_max_delay=0.02)
    yield opened
    opened.close()


def _rows(dsn, query, params=()):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _points(count, dim=4, start=0, names=("image",)):
    rng = np.random.default_rng(start)
    return [Point(start + i, {"i": start + i, "score": (start + i) / count},
                  {name: rng.normal(size=dim).astype(np.float32) for name in names}) for i in range(count)]


def test_ids_keep_their_type_and_order_across_the_whole_range(store):
    uuids = sorted(str(uuid.uuid4()) for _ in range(4))
    ints = [0, 1, 2 ** 63, 2 ** 64 - 1, 10, 9]
    assert [decode_id(encode_id(i)) for i in ints + uuids] == ints + uuids
    assert encode_id(uuids[0].upper()) == encode_id(uuids[0])  # canonical form, as Qdrant
    assert max(encode_id(i) for i in ints) < UUID_OFFSET <= min(encode_id(u) for u in uuids)
    store.create_collection("c", {"image": VectorSpec(2, "dot")})
    store.upsert("c", [Point(i, {}, {"image": np.ones(2)}) for i in reversed(ints + uuids)])
    page, _ = store.scroll("c", limit=100)
    assert [p.id for p in page] == sorted(ints) + uuids
    for bad in (-1, 2 ** 64, "not-a-uuid", 1.5, True):
        with pytest.raises(StoreError, match="neither a non-negative integer"):
            store.upsert("c", [Point(bad, {}, {"image": np.ones(2)})])


def test_large_or_float16_vectors_are_halfvec_columns_and_get_hnsw_after_the_load(store, pg_dsn):
    store.create_collection("c", {"": VectorSpec(2048, "cosine"),
                                  "small": VectorSpec(8, "dot", {"datatype": "float16"}),
                                  "plain": VectorSpec(8, "euclid", {"hnsw_config": {"m": 8, "ef_construct": 32}})})
    specs = store.vector_specs("c")
    assert specs[""].options == {"datatype": "float16"} and specs["small"].options == {"datatype": "float16"}
    types = dict(_rows(pg_dsn, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                               "WHERE attrelid = 'c'::regclass AND attnum > 0"))
    assert types["embedding"] == "halfvec(2048)" and types["embedding_small"] == "halfvec(8)"
    assert types["embedding_plain"] == "vector(8)" and types["id"] == "numeric(39,0)"
    points = _points(50, dim=8, names=("small", "plain"))
    rng = np.random.default_rng(1)
    for point in points:
        point.vectors[""] = rng.normal(size=2048)
    store.upsert("c", points)
    assert store.hnsw_columns("c") == set()
    store.finish_load("c")
    assert store.hnsw_columns("c") == {"", "small", "plain"}
    store.finish_load("c")  # a second call (a resumed job) builds nothing twice
    indexes = [d for (d,) in _rows(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'c'") if "hnsw" in d]
    assert len(indexes) == 3
    assert any("embedding_plain vector_l2_ops) WITH (m='8', ef_construction='32')" in d for d in indexes)
    assert any("embedding halfvec_cosine_ops" in d for d in indexes)
    hits = store.query("c", points[7].vectors[""], limit=3)
    assert hits[0].id == 7 and hits[0].score == pytest.approx(1.0, abs=1e-3)  # float16 storage
    [back] = store.retrieve("c", [7], with_vectors=["small"])
    np.testing.assert_allclose(back.vectors["small"], points[7].vectors["small"], rtol=1e-3, atol=1e-3)
    assert back.vectors["small"].dtype == np.float32


def test_queries_use_the_hnsw_index_and_stay_filtered(store, pg_dsn):
    store.create_collection("c", {"image": VectorSpec(16, "cosine")})
    points = _points(400, dim=16)
    store.upsert("c", points)
    store.finish_load("c")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM c ORDER BY embedding_image <=> %s::vector LIMIT 5", [str([0.1] * 16)]))
    assert "embedding_image_idx" in plan
    hits = store.query("c", points[300].vectors["image"], using="image", limit=10,
                       payload_range=Range("score", gte=0.5, lt=0.8))
    assert len(hits) == 10 and hits[0].id == 300
    assert all(0.5 <= h.payload["score"] < 0.8 for h in hits)


def test_create_like_copies_column_types_vector_options_and_payload_indexes(store, pg_dsn):
    options = {"datatype": "float16", "hnsw_config": {"m": 12}}
    store.create_collection("old", {"": VectorSpec(4, "cosine", options)})
    store.create_payload_index("old", "meta.shift", "float")
    store.create_payload_index("old", "label", "keyword")
    store.create_payload_index("old", "label", "keyword")  # already there: nothing new
    with pytest.raises(StoreError, match="unknown payload index kind 'number'"):
        store.create_payload_index("old", "x", "number")
    old = store.vector_specs("old")[""]
    store.create_collection("new", {"": VectorSpec(6, "dot", old.options), "safe": VectorSpec(6, "cosine")}, like="old")
    assert store.vector_specs("new")[""] == VectorSpec(6, "dot")
    assert store.vector_specs("new")[""].options == options
    indexes = [d for (d,) in _rows(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'new'")]
    assert any("'{meta,shift}'" in d for d in indexes) and any("'{label}'" in d for d in indexes)
    assert len(indexes) == 3  # the primary key and the two payload indexes
    store.upsert("new", [Point(i, {"meta": {"shift": i / 10}, "label": "x"}, {"": np.ones(6) + i, "safe": np.ones(6)})
                         for i in range(6)])
    hits = store.query("new", np.ones(6), using="safe", limit=10, payload_range=Range("meta.shift", lt=0.3))
    assert sorted(h.id for h in hits) == [0, 1, 2]
    with pytest.raises(MissingCollectionError):
        store.create_collection("other", {"": VectorSpec(4, "cosine")}, like="absent")
    assert not store.collection_exists("other")


def test_options_postgres_cannot_honour_are_refused(store):
    with pytest.raises(StoreError, match=r"vector options \['on_disk'\] have no meaning in PostgreSQL"):
        store.create_collection("c", {"image": VectorSpec(4, "cosine", {"on_disk": True})})
    with pytest.raises(StoreError, match="datatype 'uint8' is not supported"):
        store.create_collection("c", {"image": VectorSpec(4, "cosine", {"datatype": "uint8"})})
    with pytest.raises(StoreError, match="at most 63 bytes|1 to 63 bytes"):
        store.create_collection("x" * 64, {"image": VectorSpec(4, "cosine")})
    assert store.list_collections() == []


def test_tables_and_views_that_are_not_safeclips_are_left_alone(store, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute("CREATE VIEW items_view AS SELECT * FROM items")
    assert store.list_collections() == [] and not store.collection_exists("items")
    assert store.alias_target("items_view") is None
    store.create_collection("c", {"image": VectorSpec(2, "dot")})
    with pytest.raises(StoreError, match="cannot make 'items' an alias: a table of that name exists"):
        store.switch_alias("items", "c")
    with pytest.raises(MissingCollectionError, match="collection 'items' not found"):
        store.vector_specs("items")
    store.delete_alias("items_view")
    store.drop_collection("items")
    assert _rows(pg_dsn, "SELECT to_regclass('items') IS NOT NULL, to_regclass('items_view') IS NOT NULL") == [
        (True, True)]
    assert store.list_collections() == ["c"]


def test_dropping_a_collection_drops_its_aliases(store):
    store.create_collection("blue", {"image": VectorSpec(2, "dot")})
    store.switch_alias("photos", "blue")
    store.drop_collection("blue")
    assert store.alias_target("photos") is None and store.list_collections() == []
    store.drop_collection("blue")  # already gone: nothing to do


def test_switches_seen_from_other_connections_are_atomic_and_writes_land_in_the_target(pg_dsn):
    """A reader and a writer on their own connections while the alias flips between two tables
    with different vectors (as a side-by-side switch and its rollback do)."""
    admin = open_store(pg_dsn)
    blue, green = "photos-blue", "photos-green"
    admin.create_collection(blue, {"image": VectorSpec(4, "cosine")})
    admin.create_collection(green, {"image": VectorSpec(4, "cosine"), "safe": VectorSpec(4, "cosine")})
    admin.upsert(blue, _points(3))
    admin.upsert(green, _points(5, names=("image", "safe")))
    admin.switch_alias("photos", blue)
    errors, counts, done, writes = [], set(), threading.Event(), []

    def reader():
        local = open_store(pg_dsn)
        while not done.is_set():
            try:
                counts.add(local.count("photos"))
                local.scroll("photos", limit=100, with_vectors=True)
            except Exception as error:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(error)
        local.close()

    def writer():
        local = open_store(pg_dsn)
        try:
            for n in range(60):  # new points, and whole-point rewrites of points both tables have
                point_id = 1000 + n if n % 2 else n % 3
                local.upsert("photos", [Point(point_id, {"w": n}, {"image": np.ones(4)})])
                writes.append(point_id)
        except Exception as error:  # noqa: BLE001
            errors.append(error)
        local.close()

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for i in range(40):
        admin.switch_alias("photos", green if i % 2 == 0 else blue)
    threads[1].join()
    done.set()
    threads[0].join()
    assert errors == [] and len(writes) == 60
    new_ids = {i for i in writes if i >= 1000}
    landed = [p.id for c in (blue, green) for p in admin.scroll(c, limit=100)[0] if p.id >= 1000]
    assert sorted(landed) == sorted(new_ids)  # every new point is in exactly one table
    for point in admin.retrieve(green, [0, 1, 2, *new_ids], with_vectors=True):
        if "w" in point.payload:  # rewritten through the alias: the whole point, so no safe vector
            assert set(point.vectors) == {"image"}, point
    assert counts <= {3 + k for k in range(31)} | {5 + k for k in range(31)}
    admin.close()


def test_a_dropped_connection_is_reopened_and_the_call_retried(store, pg_dsn, caplog):
    store.create_collection("c", {"image": VectorSpec(4, "cosine")})
    store.upsert("c", _points(5))
    _rows(pg_dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'safeclip'")
    with caplog.at_level(logging.WARNING, logger="safeclip_sdk.integrations.retry"):
        assert store.count("c") == 5
    [retry] = [r.getMessage() for r in caplog.records]
    assert "count 'c' failed" in retry and "retrying" in retry


def test_an_unreachable_server_is_one_line_naming_it_after_the_retries(tmp_path):
    with pytest.raises(StoreError) as caught:
        open_store(f"postgresql://someone@/db?host={tmp_path}&port=5999", retries=1, retry_base_delay=0)
    message = str(caught.value)
    assert message.startswith(f"postgresql {tmp_path}:5999/db: connect failed after 2 attempts (connection failed")
    assert "\n" not in message


@pytest.fixture
def password_role(pg_server, pg_dsn):
    """A role that must give a password on the socket (scram-sha-256), and that password."""
    secret = "pw-MARKER-" + uuid.uuid4().hex
    role = "safeclip_" + uuid.uuid4().hex[:8]
    hba = pg_server.pgdata / "pg_hba.conf"
    original = hba.read_text()
    with pg_server.admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        database = conninfo_to_dict(pg_dsn)["dbname"]
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')  # public schema rights (PostgreSQL 15+)
        hba.write_text(f"local all {role} scram-sha-256\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    yield role, secret, pg_server.dsn(database, user=role)
    hba.write_text(original)
    with pg_server.admin() as conn:
        conn.execute("SELECT pg_reload_conf()")


def test_the_password_comes_from_the_environment_and_never_shows(password_role, monkeypatch, caplog):
    role, secret, dsn = password_role
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(StoreError) as no_password:
            open_store(dsn, retries=2, retry_base_delay=0)
        assert "failed:" in str(no_password.value) and "after" not in str(no_password.value)  # not retried
        monkeypatch.setenv("PGPASSWORD", secret + "-wrong")
        with pytest.raises(StoreError, match="password authentication failed") as wrong:
            open_store(dsn, retries=2, retry_base_delay=0)
        monkeypatch.setenv("PGPASSWORD", secret)
        store = open_store(dsn)
        store.write_state("k", {"ok": True})
        assert store.read_state("k") == {"ok": True}
        with_password = dsn.replace(f"{role}@", f"{role}:{secret}@")
        monkeypatch.delenv("PGPASSWORD")
        monkeypatch.setenv("SAFECLIP_PG_DSN", with_password)
        from_env = PgVectorStore.open()
        assert from_env.read_state("k") == {"ok": True}
        with pytest.raises(MissingCollectionError) as missing:
            from_env.count("absent")
    for shown in (repr(store), store.name, repr(from_env), from_env.name, str(wrong.value), repr(wrong.value),
                  str(missing.value), "".join(traceback.format_exception(wrong.value)), caplog.text):
        assert secret not in shown
    assert from_env.name == store.name and store.name.startswith("postgresql /")
    store.close()
    from_env.close()


def test_a_connection_string_that_cannot_be_parsed(monkeypatch):
    with pytest.raises(StoreError, match="has port 'notaport', not a number"):
        open_store("postgresql://host:notaport/db")
    with pytest.raises(StoreError, match="cannot be parsed"):
        open_store("postgresql://host/db?sslmode")
    monkeypatch.delenv("SAFECLIP_PG_DSN", raising=False)
    with pytest.raises(StoreError, match="SAFECLIP_PG_DSN"):
        PgVectorStore.open()
