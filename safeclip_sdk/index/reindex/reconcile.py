"""Bring the new collection up to date with writes the application made during the reindex.

Both collections are scrolled in id order and merge-joined; each point is compared by a 64-bit
hash of its payload (the reindex's own payload keys left out). Before the alias switch, a pass
re-embeds what is missing or differs in the new collection and deletes what the old one no longer
has; passes repeat until one finds nothing (or a bound is reached). That pass's hashes are the
*base* of the comparison after the switch, when the application writes to the new collection and
writes may still have landed in the old one since the pass:

- new changed since the base -> the application's new write: keep it;
- otherwise, old changed since the base -> a write that reached the old collection late: carry it
  over (re-embed it, or delete it from the new collection);
- neither -> nothing to do.

The base costs 16 bytes per point (a sorted array of 64-bit id keys and one of payload hashes).
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...integrations.base import Point, PointId, VectorStore
from .pipeline import PointBuilder, write_points
from .plan import Plan, id_order
from ..contract import ERROR_FIELD, FULL
from .state import failure_key

SCAN_PAGE = 512
PASS_COUNTS = ("compared", "missing", "changed", "extra", "expected_absent", "new_count")


def payload_hash(payload: dict[str, Any], reserved: tuple[str, ...]) -> int:
    """64-bit hash of a payload without the reindex's own keys (key order does not matter)."""
    kept = {key: value for key, value in payload.items() if key not in reserved}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def id_key(point_id: PointId) -> int:
    text = f"i{point_id}" if isinstance(point_id, int) else f"u{point_id}"
    return int.from_bytes(hashlib.blake2b(text.encode("ascii"), digest_size=8).digest(), "little")


def scan(store: VectorStore, collection: str, with_vectors: bool | list[str]) -> Iterator[Point]:
    start = None
    while True:
        points, start = store.scroll(collection, start=start, limit=SCAN_PAGE, with_vectors=with_vectors)
        yield from points
        if start is None:
            return


def merge(old: Iterator[Point], new: Iterator[Point]) -> Iterator[tuple[PointId, Point | None, Point | None]]:
    """Pairs of points with the same id from two id-ordered scans (None where one side lacks it)."""
    a, b = next(old, None), next(new, None)
    while a is not None or b is not None:
        if b is None or (a is not None and id_order(a.id) < id_order(b.id)):
            yield a.id, a, None
            a = next(old, None)
        elif a is None or id_order(b.id) < id_order(a.id):
            yield b.id, None, b
            b = next(new, None)
        else:
            yield a.id, a, b
            a, b = next(old, None), next(new, None)


@dataclass
class PassResult:
    """What one comparison found and repaired."""

    compared: int = 0  # ids seen in the old collection
    missing: int = 0  # in old, not in new (re-embedded)
    changed: int = 0  # payload differs (re-embedded)
    extra: int = 0  # in new, not in old (deleted)
    expected_absent: int = 0  # skipped sources (--on-error skip), absent by design
    new_count: int = 0
    carried: int = 0  # after the switch: old writes carried over
    kept_new: int = 0  # after the switch: new writes kept
    completed: int = 0  # after the switch: application points given their safe vector
    sample: list[PointId] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return self.missing + self.changed + self.extra

    def to_dict(self) -> dict[str, Any]:
        """The counts of a pass before the switch."""
        values = asdict(self)
        return {key: values[key] for key in PASS_COUNTS}

    def after_switch_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("carried", "kept_new", "completed")}


class _Repairs:
    """Collects points to re-embed and ids to delete, and applies them a batch at a time."""

    def __init__(self, store: VectorStore, plan: Plan, builder: PointBuilder, on_built):
        self.store, self.plan, self.builder = store, plan, builder
        self.on_built = on_built
        self.upserts: list[Point] = []
        self.deletes: list[PointId] = []

    def add(self, point: Point) -> None:
        self.upserts.append(point)
        if len(self.upserts) >= self.plan.batch_size:
            self.flush()

    def remove(self, point_id: PointId) -> None:
        self.deletes.append(point_id)
        if len(self.deletes) >= 1024:
            self.flush()

    def flush(self) -> None:
        upserts, deletes = self.upserts, self.deletes
        self.upserts, self.deletes = [], []
        if upserts:
            built = self.builder.build(upserts)
            write_points(self.store, self.plan.target, built.points)
            self.on_built(built)
        if deletes:
            self.store.delete(self.plan.target, deletes)


class _Sample:
    """A uniform sample of ids (reservoir), for the vector check."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen, self.ids = size, 0, []
        self._random = random.Random(seed)

    def offer(self, point_id: PointId) -> None:
        self.seen += 1
        if len(self.ids) < self.size:
            self.ids.append(point_id)
        else:
            slot = self._random.randrange(self.seen)
            if slot < self.size:
                self.ids[slot] = point_id


def reconcile_pass(store: VectorStore, plan: Plan, builder: PointBuilder, failures: dict[str, dict[str, Any]],
                   on_built, *, sample_size: int = 32, progress=None) -> tuple[PassResult, np.ndarray, np.ndarray]:
    """One comparison before the switch; returns what it found and the base (sorted keys, hashes)."""
    reserved = plan.reserved_fields()
    result = PassResult()
    repairs = _Repairs(store, plan, builder, on_built)
    sample = _Sample(sample_size)
    keys, hashes = array("Q"), array("Q")  # 16 bytes a point; lists of ints cost about 90
    for point_id, old, new in merge(scan(store, plan.source, True), scan(store, plan.target, False)):
        if new is not None:
            result.new_count += 1
        if old is None:
            result.extra += 1
            repairs.remove(point_id)
            continue
        result.compared += 1
        old_hash = payload_hash(old.payload, reserved)
        keys.append(id_key(point_id))
        hashes.append(old_hash)
        if progress is not None:
            progress.update(1)
        if new is None:
            failure = failures.get(failure_key(point_id))
            if plan.on_error == "skip" and failure is not None and failure["hash"] == str(old_hash):
                result.expected_absent += 1
                continue
            result.missing += 1
            repairs.add(old)
        elif payload_hash(new.payload, reserved) != old_hash:
            result.changed += 1
            repairs.add(old)
        else:
            sample.offer(point_id)
    repairs.flush()
    result.new_count += result.missing - result.extra
    result.sample = sample.ids
    key_array = np.frombuffer(keys, dtype=np.uint64)
    order = np.argsort(key_array, kind="stable")
    return result, key_array[order], np.frombuffer(hashes, dtype=np.uint64)[order]


def final_pass(store: VectorStore, plan: Plan, builder: PointBuilder, failures: dict[str, dict[str, Any]],
               base_keys: np.ndarray, base_hashes: np.ndarray, on_built, *, progress=None) -> PassResult:
    """The three-way comparison after the switch (see the module docstring).

    The scan only decides (payloads, no embedding), so the writes follow it closely; each write
    is preceded by a re-read of the new collection's point, and skipped if the application
    changed it since the scan.
    """
    reserved = plan.reserved_fields()
    result = PassResult()
    safe_names = [plan.safe_names[name] for name in plan.kinds] if plan.mode != FULL else []
    carry, delete, complete = [], [], []
    expected: dict[PointId, int | None] = {}  # the new collection's payload hash at the scan, for those ids only
    for point_id, old, new in merge(scan(store, plan.source, False), scan(store, plan.target, safe_names or False)):
        if progress is not None:
            progress.update(1)
        base = _lookup(base_keys, base_hashes, point_id)
        new_base = None if _skipped(plan, failures, point_id, base) else base
        old_hash = None if old is None else payload_hash(old.payload, reserved)
        new_hash = None if new is None else payload_hash(new.payload, reserved)
        if new_hash != new_base:
            result.kept_new += 1
            if new is not None and safe_names and ERROR_FIELD not in new.payload \
                    and not all(name in new.vectors for name in safe_names):
                complete.append(point_id)
                expected[point_id] = new_hash
        elif old_hash != base:
            (delete if old is None else carry).append(point_id)
            expected[point_id] = new_hash

    def unchanged(ids: list[PointId]) -> set[PointId]:
        current = {p.id: payload_hash(p.payload, reserved) for p in store.retrieve(plan.target, ids)}
        return {i for i in ids if current.get(i) == expected[i]}

    for batch in _batches(carry, plan.batch_size):
        built = builder.build(store.retrieve(plan.source, batch, with_vectors=True))
        still = unchanged(batch)
        built.points = [p for p in built.points if p.id in still]
        write_points(store, plan.target, built.points)
        on_built(built)
        result.carried += len(built.points) + built.skipped
    for batch in _batches(delete, 1024):
        still = unchanged(batch)
        store.delete(plan.target, [i for i in batch if i in still])
        result.carried += len(still)
    for batch in _batches(complete, plan.batch_size):
        points = [p for p in store.retrieve(plan.target, batch, with_vectors=True)
                  if payload_hash(p.payload, reserved) == expected[p.id]]
        built = builder.build(points)
        still = unchanged([p.id for p in built.points])
        built.points = [p for p in built.points if p.id in still]
        write_points(store, plan.target, built.points)
        on_built(built)
        result.completed += len(built.points)
    return result


def _lookup(keys: np.ndarray, hashes: np.ndarray, point_id: PointId) -> int | None:
    key = np.uint64(id_key(point_id))
    index = int(np.searchsorted(keys, key))
    return int(hashes[index]) if index < len(keys) and keys[index] == key else None


def _skipped(plan: Plan, failures: dict[str, dict[str, Any]], point_id: PointId, base: int | None) -> bool:
    """Left out of the new collection by ``--on-error skip`` with the payload of the base."""
    failure = failures.get(failure_key(point_id)) if plan.on_error == "skip" else None
    return failure is not None and base is not None and failure["hash"] == str(base)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
