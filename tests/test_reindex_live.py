"""Live writes during a reindex: nothing the application writes through the alias is lost."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import Point
from safeclip_sdk.index.reindex import complete_point, reindex
from safeclip_sdk.index.reindex.pipeline import PointBuilder
from safeclip_sdk.index.reindex.plan import Plan
from safeclip_sdk.index.reindex.reconcile import final_pass, id_key, payload_hash, reconcile_pass
from safeclip_sdk.index.reindex.sources import SourceReader
from tests.reindex_world import (RESERVED, cosine, everything, fast_folder, make_text_collection, original_vector, text_of,
                                 without_reserved)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir)


class Writer(threading.Thread):
    """The application: random upserts (new ids, some below the copy's cursor), payload changes and
    deletes through the alias, until told to stop. ``state`` is what it believes the collection holds."""

    def __init__(self, store, alias: str, state: dict[int, dict], dim: int, seed: int, complete_with=None):
        super().__init__(daemon=True)
        self.store, self.alias, self.state, self.dim = store, alias, dict(state), dim
        # an Encoder: every write goes through complete_point (the documented write path of a
        # reindexed collection), half of them with the vectors as plain lists
        self.complete_with = complete_with
        self.random = random.Random(seed)
        self.vectors = np.random.default_rng(seed)
        self.stop = threading.Event()
        self.before_switch: set[int] = set()  # ids last written while the alias still named the old collection
        self.old_target = store.alias_target(alias)
        self.writes = 0
        self.original = frozenset(state)
        self.error: BaseException | None = None

    def run(self):
        try:
            while not self.stop.wait(self.random.uniform(0.0, 0.004)):  # a busy application
                self.write_once()
        except BaseException as error:  # surfaced by the test
            self.error = error

    def write_once(self):
        action = self.random.random()
        existing = sorted(self.state)
        if action < 0.4 or not existing:
            point_id = self.random.randrange(1, 900, 2)  # odd ids: the collection has the even ones
            payload = {"text": text_of(point_id + 1000 * self.writes), "n": point_id}
            self.upsert(Point(point_id, payload, {"": original_vector(self.vectors, self.dim)}))
            self.state[point_id] = payload
        elif action < 0.75:
            point_id = self.random.choice(existing)
            payload = {"text": text_of(point_id + 1000 * self.writes), "n": point_id, "edited": self.writes}
            self.upsert(Point(point_id, payload, {"": original_vector(self.vectors, self.dim)}))
            self.state[point_id] = payload
        else:
            # deletes of points that were there before the reindex: deleting a point the writer
            # inserted around the switch is the one case the reindex cannot protect (docs/reindex.md)
            settled = [i for i in existing if i in self.original]
            if not settled:
                return
            point_id = self.random.choice(settled)
            self.store.delete(self.alias, [point_id])
            del self.state[point_id]
        self.writes += 1
        # after the write: if the alias still names the old collection, the write landed there
        if self.store.alias_target(self.alias) == self.old_target:
            self.before_switch.add(point_id)
        else:
            self.before_switch.discard(point_id)


    def upsert(self, point: Point):
        if self.complete_with is not None:
            if self.writes % 2:
                point = Point(point.id, point.payload, {name: v.tolist() for name, v in point.vectors.items()})
            point = complete_point(self.store, self.alias, point, self.complete_with)
        self.store.upsert(self.alias, [point])


@pytest.fixture
def folder(tmp_path):
    with fast_folder(tmp_path) as path:
        yield path


def test_writer_through_the_whole_reindex_loses_nothing(folder, encoder):
    store = open_store(folder / "db")
    dim = encoder.space.stored_dim
    payloads = make_text_collection(store, "docs-v0", 400, dim, alias="docs", step=2)
    writer = Writer(store, "docs", payloads, dim, seed=7)
    writer.start()
    try:
        report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, num_ranges=3,
                         progress=False)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None
    assert writer.writes > 30, "the writer should have written throughout the reindex"

    new = everything(store, "docs")
    assert store.alias_target("docs") == report.target
    assert {i: without_reserved(p.payload) for i, p in new.items()} == writer.state
    with_safe = {i: p for i, p in new.items() if "safe" in p.vectors}
    # only writes that may have reached the new collection after its last comparison lack the safe vector
    assert set(new) - set(with_safe) <= set(new) - writer.before_switch
    ids = sorted(with_safe)
    expected = encoder.encode_text([with_safe[i].payload["text"] for i in ids])
    assert all(cosine(with_safe[i].vectors["safe"], e) > 0.999 for i, e in zip(ids, expected))
    repairs = sum(p["missing"] + p["changed"] + p["extra"] for p in report.passes)
    assert repairs > 0, "writes during the copy must have been found by the reconciliation"
    store.close()


def test_complete_point_writes_through_a_follow_up_reindex_are_never_refused(folder, encoder):
    """v1 -> v2 while the application writes every point through complete_point: each write is
    accepted in every phase, and v2 ends with exactly the application's state, all of it safe."""
    store = open_store(folder / "db")
    dim = encoder.space.stored_dim
    payloads = make_text_collection(store, "docs-v0", 300, dim, alias="docs", step=2)
    reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, progress=False)
    writer = Writer(store, "docs", payloads, dim, seed=11, complete_with=encoder)
    writer.start()
    try:
        report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=16, num_ranges=3,
                         new_version=True, progress=False)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None, f"a write was refused: {writer.error}"
    # each write embeds a text first: on PostgreSQL (2 cores, a CI run) about 30 fit in the reindex
    assert writer.writes > 10, "the writer should have written throughout the reindex"
    assert (report.source, report.target) == ("docs-safeclip-v1", "docs-safeclip-v2")

    new = everything(store, "docs")
    assert {i: without_reserved(p.payload) for i, p in new.items()} == writer.state
    ids = sorted(new)
    expected = encoder.encode_text([new[i].payload["text"] for i in ids])
    assert all(cosine(new[i].vectors["safe"], e) > 0.999 for i, e in zip(ids, expected))
    store.close()


def _plan(store, encoder, source, target):
    specs = store.vector_specs(source)
    return Plan(alias="docs", source=source, target=target, adopt=False, mode="side-by-side", kinds={"": "text"},
                safe_names={"": "safe"}, source_specs=specs, target_specs={**specs, "safe": specs[""]},
                score_field="safeclip_shift", on_error="keep", batch_size=16, sources={})


def test_three_way_rule_after_the_switch(folder, encoder):
    """Writes between the last pass and the switch land in the old collection; writes after it in the
    new one. The pass after the switch carries over the first kind and keeps the second."""
    store = open_store(folder / "db")
    dim = encoder.space.stored_dim
    make_text_collection(store, "old", 20, dim)
    store.create_collection("new", {"": store.vector_specs("old")[""], "safe": store.vector_specs("old")[""]})
    plan = _plan(store, encoder, "old", "new")
    builder = PointBuilder(plan, encoder, SourceReader(text_field="text"))
    result, keys, hashes = reconcile_pass(store, plan, builder, {}, lambda built: None)
    assert result.missing == 20 and len(keys) == 20
    rng = np.random.default_rng(5)

    def put(collection, point_id, text):
        store.upsert(collection, [Point(point_id, {"text": text, "n": point_id}, {"": original_vector(rng, dim)})])

    put("old", 1, "late write to old")  # changed in old only -> carried over
    store.delete("old", [2])  # deleted in old only -> deleted in new
    put("old", 101, "late insert to old")  # new id in old only -> carried over
    put("new", 3, "application write to new")  # changed in new only -> kept
    put("old", 4, "old side")
    put("new", 4, "new side wins")  # changed in both -> new kept
    store.delete("new", [5])  # deleted in new -> stays deleted
    put("old", 6, "old write")
    store.delete("new", [6])  # changed in old, deleted in new -> stays deleted
    put("new", 202, "insert to new")  # new id in new only, without the safe vector -> kept and completed

    after = final_pass(store, plan, builder, {}, keys, hashes, lambda built: None)

    new = everything(store, "new")
    assert new[1].payload["text"] == "late write to old" and "safe" in new[1].vectors
    assert 2 not in new and 5 not in new and 6 not in new
    assert new[101].payload["text"] == "late insert to old"
    assert new[3].payload["text"] == "application write to new"
    assert new[4].payload["text"] == "new side wins"
    assert new[202].payload["text"] == "insert to new"
    assert cosine(new[202].vectors["safe"], encoder.encode_text(["insert to new"])[0]) > 0.999
    assert (after.carried, after.completed) == (3, 3)  # 1, 2, 101 carried; 3, 4, 202 got their safe vector
    untouched = [i for i in range(20) if i not in (1, 2, 3, 4, 5, 6)]
    assert all(payload_hash(new[i].payload, RESERVED) == hashes[np.searchsorted(keys, np.uint64(id_key(i)))]
               for i in untouched)
    store.close()
