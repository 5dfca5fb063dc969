"""The VectorStore contract, run against every store safeclip serves: Qdrant in local path mode,
``:memory:`` and, when ``QDRANT_URL`` is set, a server (qdrant-client's own practice; no server runs
on CI machines), and PostgreSQL with pgvector (a real server the tests start, see
tests/conftest_pg.py). Tests that take ``qdrant_store`` check what only Qdrant has."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from qdrant_client import models

from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import (DEFAULT_VECTOR, MissingCollectionError, Point, Range, StoreError,
                                            VectorSpec)
from safeclip_sdk.integrations.qdrant import STATE_COLLECTION, QdrantStore, collection_settings, vectors_config
from safeclip_sdk.integrations.qdrant_edge import EdgeStore, folder_engine
from safeclip_sdk.integrations.retry import RetryPolicy
from tests.faulty_store import FaultyStore

SERVER_URL = os.environ.get("QDRANT_URL")
QDRANT_KINDS = ["path", "memory", "server"]
#: per store, vector options it keeps and reports back
KEPT_OPTIONS = {"qdrant": {"on_disk": True}, "pgvector": {"hnsw_config": {"m": 24}}}


def _open(kind, request, tmp_path):
    if kind == "path":  # qdrant-client's local mode (open_store gives new folders the embedded engine)
        return QdrantStore.open(tmp_path / "db")
    if kind == "memory":
        return open_store(":memory:")
    if kind == "pgvector":
        return open_store(request.getfixturevalue("pg_dsn"), retries=2, retry_base_delay=0.01)
    if kind == "edge":
        return EdgeStore.open(tmp_path / "edge")
    if not SERVER_URL:
        pytest.skip("QDRANT_URL is not set (no Qdrant server on this machine)")
    return open_store(SERVER_URL, retries=2)


def _backend(store):
    return "qdrant" if isinstance(store, QdrantStore) else "pgvector"


def _opened(request, tmp_path):
    opened = _open(request.param, request, tmp_path)
    before = set(opened.list_collections())
    yield opened
    if request.param == "server":  # leave the server as we found it
        for name in set(opened.list_collections()) - before:
            for alias in _aliases_of(opened, name):
                opened.delete_alias(alias)
            opened.drop_collection(name)
    opened.close()


@pytest.fixture(params=[*QDRANT_KINDS, "pgvector", "edge"])
def store(request, tmp_path):
    yield from _opened(request, tmp_path)


@pytest.fixture(params=QDRANT_KINDS)
def qdrant_store(request, tmp_path):
    yield from _opened(request, tmp_path)


def _aliases_of(store, collection):
    return [a.alias_name for a in store._client.get_aliases().aliases if a.collection_name == collection]


@pytest.fixture
def name():
    """A collection name no other test (or server user) has."""
    return f"test-{uuid.uuid4().hex[:10]}"


def _unit(values):
    array = np.asarray(values, dtype=np.float32)
    return array / np.linalg.norm(array)


def _points(count, *, start=0, dim=4, names=("image",)):
    rng = np.random.default_rng(start)
    return [Point(start + i, {"i": start + i, "score": (start + i) / 100},
                  {name: rng.normal(size=dim).astype(np.float32) for name in names}) for i in range(count)]


# --- collections ---

def test_create_list_specs_drop(store, name):
    kept = KEPT_OPTIONS[_backend(store)]
    store.create_collection(name, {"image": VectorSpec(4, "cosine", kept), "text": VectorSpec(3, "dot")})
    assert store.collection_exists(name)
    assert name in store.list_collections()
    specs = store.vector_specs(name)
    assert specs == {"image": VectorSpec(4, "cosine"), "text": VectorSpec(3, "dot")}
    assert specs["image"].options == kept
    store.drop_collection(name)
    assert not store.collection_exists(name)
    assert name not in store.list_collections()


def test_unnamed_vector_is_the_empty_name(store, name):
    store.create_collection(name, {DEFAULT_VECTOR: VectorSpec(3, "euclid")})
    assert store.vector_specs(name) == {DEFAULT_VECTOR: VectorSpec(3, "euclid")}
    store.upsert(name, [Point(1, {"a": 1}, {DEFAULT_VECTOR: np.array([1.0, 2.0, 3.0])})])
    [point] = store.retrieve(name, [1], with_vectors=True)
    assert set(point.vectors) == {DEFAULT_VECTOR}
    np.testing.assert_allclose(point.vectors[DEFAULT_VECTOR], [1.0, 2.0, 3.0])


def test_unnamed_vector_beside_named_ones(store, name):
    store.create_collection(name, {DEFAULT_VECTOR: VectorSpec(3, "dot"), "safe": VectorSpec(2, "cosine")})
    assert set(store.vector_specs(name)) == {DEFAULT_VECTOR, "safe"}
    store.upsert(name, [Point(7, {}, {DEFAULT_VECTOR: np.array([1.0, 0.0, 0.0]), "safe": np.array([0.0, 1.0])})])
    [point] = store.retrieve(name, [7], with_vectors=True)
    assert set(point.vectors) == {DEFAULT_VECTOR, "safe"}
    [only_safe] = store.retrieve(name, [7], with_vectors=["safe"])
    assert set(only_safe.vectors) == {"safe"}
    assert [hit.id for hit in store.query(name, np.array([1.0, 0.0, 0.0]))] == [7]
    assert [hit.id for hit in store.query(name, np.array([0.0, 1.0]), using="safe")] == [7]


def test_point_with_only_the_unnamed_vector_in_a_collection_with_named_ones(store, name):
    # what an application writes through the alias after a side-by-side reindex: no safe vector yet
    store.create_collection(name, {DEFAULT_VECTOR: VectorSpec(3, "dot"), "safe": VectorSpec(2, "cosine")})
    store.upsert(name, [Point(8, {"a": 1}, {DEFAULT_VECTOR: np.array([0.0, 1.0, 0.0])})])
    [point] = store.retrieve(name, [8], with_vectors=True)
    assert set(point.vectors) == {DEFAULT_VECTOR} and point.payload == {"a": 1}


def test_create_like_copies_vector_options_and_runs_the_settings_copy(qdrant_store, name):
    store = qdrant_store
    quantized = {"on_disk": True, "quantization_config": {"scalar": {"type": "int8", "always_ram": True}},
                 "hnsw_config": {"m": 32}}
    store.create_collection(name, {"image": VectorSpec(4, "cosine", quantized)})
    old = store.vector_specs(name)["image"]
    store.create_collection(f"{name}-v2", {"image": VectorSpec(6, "dot", old.options)}, like=name)
    new = store.vector_specs(f"{name}-v2")["image"]
    assert (new.size, new.distance) == (6, "dot")
    assert new.options["on_disk"] is True
    assert new.options["quantization_config"]["scalar"]["type"] == "int8"
    assert new.options["hnsw_config"]["m"] == 32


def test_collection_settings_carry_server_side_config():
    """What a server reports (local mode keeps none of it) becomes create_collection arguments."""
    info = models.CollectionInfo(
        status=models.CollectionStatus.GREEN, optimizer_status=models.OptimizersStatusOneOf.OK,
        points_count=0, segments_count=1,
        config=models.CollectionConfig(
            params=models.CollectionParams(vectors=models.VectorParams(size=4, distance=models.Distance.COSINE),
                                           shard_number=3, replication_factor=2, on_disk_payload=True),
            hnsw_config=models.HnswConfig(m=48, ef_construct=200, full_scan_threshold=5000),
            optimizer_config=models.OptimizersConfig(deleted_threshold=0.3, vacuum_min_vector_number=500,
                                                     default_segment_number=4, flush_interval_sec=7),
            wal_config=models.WalConfig(wal_capacity_mb=64, wal_segments_ahead=1),
            quantization_config=models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))),
        payload_schema={
            "label": models.PayloadIndexInfo(data_type=models.PayloadSchemaType.KEYWORD, points=0),
            "safeclip_score": models.PayloadIndexInfo(
                data_type=models.PayloadSchemaType.FLOAT, points=0,
                params=models.FloatIndexParams(type=models.FloatIndexType.FLOAT, is_principal=True)),
        })
    settings, indexes = collection_settings(info)
    assert settings["shard_number"] == 3 and settings["replication_factor"] == 2
    assert settings["on_disk_payload"] is True
    hnsw = settings["hnsw_config"]
    assert isinstance(hnsw, models.HnswConfigDiff)
    assert (hnsw.m, hnsw.ef_construct, hnsw.full_scan_threshold) == (48, 200, 5000)
    assert settings["optimizers_config"].deleted_threshold == 0.3
    assert settings["optimizers_config"].default_segment_number == 4
    assert (settings["wal_config"].wal_capacity_mb, settings["wal_config"].wal_segments_ahead) == (64, 1)
    assert isinstance(settings["quantization_config"], models.BinaryQuantization)
    assert indexes["label"] == models.PayloadSchemaType.KEYWORD
    assert indexes["safeclip_score"].is_principal is True
    # and the arguments are ones qdrant-client accepts
    client_store = open_store(":memory:")
    client_store._client.create_collection("copy", vectors_config=vectors_config({"": VectorSpec(4, "cosine")}),
                                           **settings)
    assert client_store.vector_specs("copy") == {"": VectorSpec(4, "cosine")}


def test_payload_index_on_a_server_and_nothing_locally(qdrant_store, name, recwarn):
    store = qdrant_store
    store.create_collection(name, {"image": VectorSpec(4, "cosine")})
    store.create_payload_index(name, "safeclip_shift", "float")
    schema = store._client.get_collection(name).payload_schema
    if store.local:
        assert schema == {} and not [w for w in recwarn if "Payload indexes" in str(w.message)]
    else:
        assert schema["safeclip_shift"].data_type == models.PayloadSchemaType.FLOAT
        store.create_collection(f"{name}-copy", {"image": VectorSpec(4, "cosine")}, like=name)
        assert "safeclip_shift" in store._client.get_collection(f"{name}-copy").payload_schema
    with pytest.raises(StoreError, match="unknown payload index kind 'number'"):
        store.create_payload_index(name, "x", "number")


def test_missing_collection_is_a_clear_error(store, name):
    for call in (lambda: store.count(name), lambda: store.vector_specs(name),
                 lambda: store.scroll(name), lambda: store.query(name, np.ones(3)),
                 lambda: store.upsert(name, _points(1))):
        with pytest.raises(MissingCollectionError, match=f"collection '{name}' not found") as caught:
            call()
        assert "\n" not in str(caught.value)


def test_wrong_vector_size_is_a_one_line_error(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine")})
    with pytest.raises(StoreError, match=f"upsert '{name}' failed") as caught:
        store.upsert(name, _points(1, dim=3))
    assert "\n" not in str(caught.value)


def test_unknown_vector_name_in_query(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine")})
    with pytest.raises(StoreError, match="has no vector 'text'"):
        store.query(name, np.ones(4), using="text")


# --- points ---

def test_scroll_orders_ints_before_uuids_and_pages_with_a_cursor(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine")})
    uuids = sorted(str(uuid.uuid4()) for _ in range(5))
    ints = [3, 1, 200, 42, 7, 0]
    rng = np.random.default_rng(0)
    points = [Point(i, {"id": i}, {"image": rng.normal(size=4)}) for i in ints + uuids]
    rng.shuffle(points)
    store.upsert(name, points)
    seen, start, pages = [], None, 0
    while True:
        page, start = store.scroll(name, start=start, limit=4)
        seen += [p.id for p in page]
        pages += 1
        assert all(p.payload == {"id": p.id} for p in page)
        if start is None:
            break
    assert seen == sorted(ints) + uuids
    assert pages == 3
    # a saved cursor resumes ("ids >= start"), even after its point was deleted
    _, cursor = store.scroll(name, limit=3)
    store.delete(name, [cursor])
    resumed, _ = store.scroll(name, start=cursor, limit=100)
    assert [p.id for p in resumed] == [i for i in sorted(ints) + uuids if i not in (0, 1, 3, cursor)]


def test_upsert_replaces_whole_points(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine"), "text": VectorSpec(4, "cosine")})
    store.upsert(name, [Point(1, {"a": 1, "b": 2}, {"image": np.ones(4), "text": np.ones(4)})])
    store.upsert(name, [Point(1, {"a": 9}, {"image": np.array([1.0, 0, 0, 0])})])
    [point] = store.retrieve(name, [1], with_vectors=True)
    assert point.payload == {"a": 9}
    assert set(point.vectors) == {"image"}
    np.testing.assert_allclose(point.vectors["image"], [1.0, 0, 0, 0])


def test_retrieve_count_delete(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine")})
    store.upsert(name, _points(10))
    assert store.count(name) == 10
    got = store.retrieve(name, [2, 5, 999])
    assert sorted(p.id for p in got) == [2, 5]
    assert all(p.vectors == {} for p in got)
    with_vectors = store.retrieve(name, [2], with_vectors=True)[0]
    np.testing.assert_allclose(with_vectors.vectors["image"], _unit(_points(10)[2].vectors["image"]), atol=1e-6)
    store.delete(name, iter([2, 5]))
    store.delete(name, [])
    store.upsert(name, [])
    assert store.count(name) == 8
    assert store.retrieve(name, [2, 5]) == []


def test_query_finds_the_nearest_and_filters_on_a_range(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine"), "text": VectorSpec(4, "euclid")})
    points = _points(20, names=("image", "text"))
    store.upsert(name, points)
    target = points[13]
    hits = store.query(name, target.vectors["image"], using="image", limit=5)
    assert hits[0].id == 13 and hits[0].payload == target.payload
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Euclidean distances come back negated: larger is still closer
    text_hits = store.query(name, target.vectors["text"], using="text", limit=3)
    assert text_hits[0].id == 13 and text_hits[0].score == pytest.approx(0.0, abs=1e-5)
    assert text_hits[1].score < 0
    filtered = store.query(name, target.vectors["image"], using="image", limit=20,
                           payload_range=Range("score", lt=0.10))
    assert sorted(h.id for h in filtered) == list(range(10))
    window = store.query(name, target.vectors["image"], using="image", limit=20,
                         payload_range=Range("score", gte=0.05, lt=0.08))
    assert sorted(h.id for h in window) == [5, 6, 7]
    both = store.query(name, target.vectors["image"], using="image", limit=20,
                       payload_range=[Range("score", gte=0.05), Range("score", lt=0.08)])
    assert sorted(h.id for h in both) == [5, 6, 7]


def test_nested_payload_range(store, name):
    store.create_collection(name, {"image": VectorSpec(4, "cosine")})
    store.upsert(name, [Point(i, {"meta": {"s": i / 10}}, {"image": np.ones(4) + i}) for i in range(5)])
    hits = store.query(name, np.ones(4), using="image", limit=5, payload_range=Range("meta.s", gte=0.25))
    assert sorted(h.id for h in hits) == [3, 4]


# --- aliases ---

def test_aliases_switch_and_writes_land_in_the_target(store, name):
    blue, green, alias = f"{name}-blue", f"{name}-green", name
    for collection in (blue, green):
        store.create_collection(collection, {"image": VectorSpec(4, "cosine")})
    assert store.alias_target(alias) is None
    store.switch_alias(alias, blue)
    assert store.alias_target(alias) == blue
    assert not store.collection_exists(alias)
    assert alias not in store.list_collections()
    store.upsert(alias, _points(3))
    assert (store.count(blue), store.count(green)) == (3, 0)
    store.switch_alias(alias, green)
    assert store.alias_target(alias) == green
    store.upsert(alias, _points(2, start=100))
    assert (store.count(blue), store.count(green)) == (3, 2)
    assert store.vector_specs(alias) == store.vector_specs(green)
    with pytest.raises(StoreError, match="is an alias"):
        store.drop_collection(alias)
    with pytest.raises(MissingCollectionError, match="no such collection"):
        store.switch_alias(alias, f"{name}-absent")
    assert store.alias_target(alias) == green
    store.delete_alias(alias)
    store.delete_alias(alias)
    assert store.alias_target(alias) is None
    assert store.collection_exists(blue) and store.collection_exists(green)


def test_readers_never_see_the_alias_missing_during_switches(store, name):
    blue, green = f"{name}-blue", f"{name}-green"
    for collection, count in ((blue, 3), (green, 5)):
        store.create_collection(collection, {"image": VectorSpec(4, "cosine")})
        store.upsert(collection, _points(count))
    store.switch_alias(name, blue)
    errors, counts, done = [], set(), threading.Event()

    def reader():
        while not done.is_set():
            try:
                counts.add(store.count(name))
            except Exception as error:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(40):
        store.switch_alias(name, green if i % 2 == 0 else blue)
    done.set()
    thread.join()
    assert errors == []
    assert counts <= {3, 5}


# --- state documents ---

def test_state_round_trip(store):
    key = f"reindex:{uuid.uuid4().hex}"
    assert store.read_state(key) is None
    state = {"phase": "copy", "cursor": {"0": 17, "1": "5f0c3a4e-0000-4000-8000-000000000000"}, "ratio": 0.25,
             "done": [1, 2], "nested": {"ok": True, "none": None}}
    store.write_state(key, state)
    assert store.read_state(key) == state
    store.write_state(key, {"phase": "verify"})
    assert store.read_state(key) == {"phase": "verify"}
    assert STATE_COLLECTION not in store.list_collections()  # the same name in every store
    store.delete_state(key)
    store.delete_state(key)
    assert store.read_state(key) is None


def test_state_survives_reopening_a_local_folder(tmp_path):
    first = open_store(tmp_path / "db")
    first.write_state("index:photos-safeclip-v1", {"mode": "full", "threshold": None})
    first.close()
    second = open_store(tmp_path / "db")
    assert second.read_state("index:photos-safeclip-v1") == {"mode": "full", "threshold": None}
    second.close()


def test_delete_state_without_any_state_collection(tmp_path):
    store = open_store(tmp_path / "db")
    store.delete_state("nothing")
    assert store.read_state("nothing") is None


# --- opening and faults ---

@pytest.mark.service
def test_a_folder_open_in_another_process_is_a_clear_error(tmp_path):
    folder = tmp_path / "db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from qdrant_client import QdrantClient; "
        f"c = QdrantClient(path={str(folder)!r}); print('open', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="open in another process") as caught:
            open_store(folder)
        assert "\n" not in str(caught.value)
        assert str(folder) in str(caught.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.service
def test_an_edge_folder_survives_a_sigkill_and_admits_one_process(tmp_path):
    folder = tmp_path / "edge"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, numpy as np; from safeclip_sdk.integrations.base import Point, VectorSpec; "
        "from safeclip_sdk.integrations.qdrant_edge import EdgeStore; "
        f"s = EdgeStore.open({str(folder)!r}); s.create_collection('c', {{'': VectorSpec(4, 'cosine')}}); "
        "s.switch_alias('a', 'c')\n"
        "for n in range(10**6):\n"
        "    s.upsert('a', [Point(n, {'n': n}, {'': np.ones(4)})]); s.write_state('job', {'n': n})\n"
        "    print(n, flush=True)")], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(50):
            written = int(writer.stdout.readline())
        assert folder_engine(folder) == "edge"
        with pytest.raises(StoreError, match="open in another process") as caught:
            EdgeStore.open(folder)
        assert "\n" not in str(caught.value)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    store = EdgeStore.open(folder)
    assert store.alias_target("a") == "c"
    assert store.count("a") >= written + 1 and store.read_state("job")["n"] >= written
    assert len(store.retrieve("a", list(range(written + 1)))) == written + 1
    store.close()
    local = QdrantStore.open(tmp_path / "db")
    local.create_collection("c", {"": VectorSpec(4, "cosine")})
    local.close()
    assert folder_engine(tmp_path / "db") == "local" and folder_engine(tmp_path / "new") is None
    with pytest.raises(StoreError, match="holds qdrant-client's local mode"):
        EdgeStore.open(tmp_path / "db")


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "db").write_text("not a folder")
    with pytest.raises(StoreError, match=f"qdrant edge {tmp_path / 'db'}: not a folder"):
        open_store(tmp_path / "db")
    with pytest.raises(StoreError, match=f"qdrant local {tmp_path / 'db'}: cannot open the folder"):
        QdrantStore.open(tmp_path / "db")


def test_one_local_store_serves_several_threads(tmp_path):
    store = open_store(tmp_path / "db")
    store.create_collection("c", {"image": VectorSpec(4, "cosine")})
    errors = []

    def writer(offset):
        try:
            for start in range(offset, offset + 100, 10):
                store.upsert("c", _points(10, start=start))
                store.scroll("c", limit=5)
        except Exception as error:  # noqa: BLE001 - any failure is what this test looks for
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(offset,)) for offset in (0, 1000, 2000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and store.count("c") == 300
    store.close()
    reopened = open_store(tmp_path / "db")
    assert reopened.count("c") == 300


@pytest.mark.parametrize("target", ["localhost:6333", "qdrant.example.com:6333"])
def test_a_host_and_port_without_scheme_is_refused(target):
    with pytest.raises(StoreError, match=f"write http://{target}"):
        open_store(target)


@pytest.mark.parametrize("url", ["https://user:secret@host:6333", "https://host:6333/?api_key=secret"])
def test_credentials_in_the_url_are_refused(url):
    with pytest.raises(StoreError, match="QDRANT_API_KEY") as caught:
        open_store(url)
    assert "secret" not in str(caught.value)


def test_transient_faults_are_retried(store, caplog):
    inner = store
    inner.create_collection("c", {"image": VectorSpec(4, "cosine")})
    store = FaultyStore(inner, retry=RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002))
    store.fail("upsert", lambda: ConnectionError("connection reset by peer"), times=2)
    with caplog.at_level(logging.WARNING, logger="safeclip_sdk.integrations.retry"):
        store.upsert("c", _points(4))
    assert store.calls["upsert"] == 3
    assert inner.count("c") == 4
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2 and all("connection reset by peer" in m for m in retries)


def test_a_fault_that_persists_ends_in_one_line(store):
    inner = store
    inner.create_collection("c", {"image": VectorSpec(4, "cosine")})
    store = FaultyStore(inner, retry=RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.001))
    store.fail("scroll", TimeoutError)
    with pytest.raises(StoreError) as caught:
        store.scroll("c")
    assert str(caught.value) == f"faulty {inner.name}: scroll failed after 4 attempts (timed out)"
    assert store.calls["scroll"] == 4


def test_errors_that_are_not_transient_are_not_retried(store):
    store = FaultyStore(store, retry=RetryPolicy(attempts=5, base_delay=0))
    store.fail("count", KeyError("bug"), calls=[1])
    with pytest.raises(KeyError):
        store.count("c")
    assert store.calls["count"] == 1


def test_faults_on_chosen_calls_only(store):
    store = FaultyStore(store)
    store.fail("read_state", StoreError("db: read failed"), calls=[2])
    assert store.read_state("k") is None
    with pytest.raises(StoreError, match="read failed"):
        store.read_state("k")
    assert store.read_state("k") is None
    store.fail("write_state", RuntimeError("boom"), after=1)
    store.write_state("k", {"n": 1})
    with pytest.raises(RuntimeError):
        store.write_state("k", {"n": 2})
    store.heal()
    store.write_state("k", {"n": 3})
    assert store.read_state("k") == {"n": 3}


def test_backoff_grows_with_full_jitter_up_to_the_cap():
    import random

    policy = RetryPolicy(attempts=8, base_delay=0.5, max_delay=3.0)
    rng = random.Random(0)
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (7, 3.0)]:
        delays = [policy.delay(retry, rng) for _ in range(300)]
        assert 0 <= min(delays) and max(delays) <= cap
        assert max(delays) > 0.8 * cap  # spread over the whole range, not a fixed step
        assert min(delays) < 0.2 * cap


def test_unreachable_server_never_shows_the_api_key(monkeypatch, caplog):
    marker = "sk-MARKER-" + uuid.uuid4().hex
    monkeypatch.setenv("QDRANT_API_KEY", marker)
    with caplog.at_level(logging.DEBUG):
        store = open_store("http://127.0.0.1:9", timeout=1, retries=2, retry_base_delay=0.01, retry_max_delay=0.02)
        assert isinstance(store, QdrantStore)
        assert marker not in repr(store) and marker not in store.name
        with pytest.raises(StoreError) as caught:
            store.count("photos")
        message = str(caught.value)
        assert message.startswith("qdrant http://127.0.0.1:9: count 'photos' failed after 3 attempts (cannot connect")
        assert "\n" not in message
        assert marker not in message and marker not in repr(caught.value)
        assert marker not in "".join(traceback.format_exception(caught.value))
        with pytest.raises(StoreError) as caught_state:
            store.write_state("k", {"a": 1})
        assert marker not in str(caught_state.value)
    logged = [record.getMessage() for record in caplog.records]
    assert any("retrying" in line for line in logged)
    assert not any(marker in line for line in logged)


# --- a failing HTTP server: qdrant-client's real REST path against chosen answers ---

class _FailingQdrant(BaseHTTPRequestHandler):
    """Answers every request with ``status`` (after ``delay`` seconds), recording what it got."""

    status, body, delay = 503, b"", 0.0
    seen: list = []

    def _answer(self):
        self.seen.append((self.command, self.path, dict(self.headers)))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def failing_server():
    _FailingQdrant.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FailingQdrant)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _FailingQdrant
    httpd.shutdown()
    httpd.server_close()


def _answer_with(handler, status, error=None, delay=0.0):
    handler.status, handler.delay = status, delay
    handler.body = json.dumps({"status": {"error": error}}).encode() if error else b"{}"


def test_server_errors_5xx_and_429_are_retried(failing_server, monkeypatch, caplog):
    url, handler = failing_server
    marker = "sk-MARKER-" + uuid.uuid4().hex
    monkeypatch.setenv("QDRANT_API_KEY", marker)
    store = open_store(url, timeout=2, retries=2, retry_base_delay=0.01, retry_max_delay=0.01)
    with caplog.at_level(logging.DEBUG):
        _answer_with(handler, 503, "Service unavailable")
        with pytest.raises(StoreError) as caught:
            store.upsert("photos", _points(2))
        assert str(caught.value) == f"qdrant {url}: upsert 'photos' failed after 3 attempts (HTTP 503 Service Unavailable)"
        assert len(handler.seen) == 3
        _answer_with(handler, 429, "Too many requests")
        with pytest.raises(StoreError, match=r"count 'photos' failed after 3 attempts \(HTTP 429 too many requests\)"):
            store.count("photos")
    assert all(headers.get("api-key") == marker for _, _, headers in handler.seen)  # the key was sent...
    assert marker not in caplog.text  # ...and never logged
    assert marker not in "".join(traceback.format_exception(caught.value))


@pytest.mark.slow
def test_a_slow_server_times_out(failing_server):
    url, handler = failing_server
    _answer_with(handler, 200, delay=1.6)
    store = open_store(url, timeout=1, retries=1, retry_base_delay=0.01)
    with pytest.raises(StoreError, match=r"scroll 'photos' failed after 2 attempts \(timed out\)"):
        store.scroll("photos")


def test_server_rejections_are_not_retried(failing_server):
    url, handler = failing_server
    store = open_store(url, retries=3, retry_base_delay=0.01)
    _answer_with(handler, 400, "Wrong input: Vector dimension error: expected dim: 4, got 3")
    with pytest.raises(StoreError) as caught:
        store.upsert("photos", _points(1, dim=3))
    assert str(caught.value) == (f"qdrant {url}: upsert 'photos' failed: HTTP 400 "
                                 f"Wrong input: Vector dimension error: expected dim: 4, got 3")
    assert len(handler.seen) == 1
    _answer_with(handler, 404, "Collection `photos` doesn't exist!")
    with pytest.raises(MissingCollectionError, match=f"qdrant {url}: collection 'photos' not found"):
        store.count("photos")
    assert len(handler.seen) == 2


def test_new_folders_open_with_the_embedded_engine_and_local_mode_folders_keep_theirs(tmp_path):
    fresh = open_store(tmp_path / "new")
    assert isinstance(fresh, EdgeStore) and folder_engine(tmp_path / "new") == "edge"
    fresh.create_collection("photos", {"image": VectorSpec(4, "cosine")})
    fresh.close()
    assert isinstance(reopened := open_store(tmp_path / "new"), EdgeStore) and "photos" in reopened.list_collections()
    reopened.close()
    local = QdrantStore.open(tmp_path / "old")
    local.create_collection("photos", {"image": VectorSpec(4, "cosine")})
    local.close()
    assert folder_engine(tmp_path / "old") == "local"
    again = open_store(tmp_path / "old")
    assert isinstance(again, QdrantStore) and "photos" in again.list_collections()
    again.close()
    assert isinstance(memory := open_store(":memory:"), QdrantStore)
    memory.close()
