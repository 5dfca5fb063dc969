"""A reindex's progress, kept as state documents in the database itself.

Documents (``VectorStore.write_state``), all JSON:

- ``reindex:<alias>``: the job: its plan, phase, one cursor per id range, counters, the safety
  gate (its settings, both audits and the decision), and the alias's history (which collection it
  pointed at, when and why), used by rollback and cleanup;
- ``reindex:<alias>:failures``: points whose source could not be read (id, reason, payload hash);
- ``reindex:<alias>:base:<i>``: the payload hashes of the last reconciliation before the alias
  switch, in chunks, so the pass after the switch can resume on any machine;
- ``index:<collection>``: how a finished collection was built, read by search.

Because the state is in the database, a rerun on any machine that reaches it continues the job.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from ...integrations.base import PointId, VectorStore

STATE_VERSION = 1
BASE_CHUNK = 65536  # points per base document (16 bytes each: about 1.4 MB of base64)

# phases, in order (the gate only when the job has one)
CREATE, COPY, RECONCILE, GATE, SWITCH, FINAL, DONE = "create", "copy", "reconcile", "gate", "switch", "final", "done"
PHASES = (CREATE, COPY, RECONCILE, GATE, SWITCH, FINAL, DONE)


def job_key(alias: str) -> str:
    return f"reindex:{alias}"


def read_job(store: VectorStore, alias: str) -> dict[str, Any] | None:
    return store.read_state(job_key(alias))


def write_job(store: VectorStore, job: dict[str, Any]) -> None:
    job["updated"] = time.time()
    store.write_state(job_key(job["plan"]["alias"]), job)


def new_job(plan_dict: dict[str, Any], probe: list[float], model: str, ranges: list[dict[str, Any]],
            carried: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": STATE_VERSION, "phase": CREATE, "plan": plan_dict, "model": model, "probe": probe,
        "ranges": ranges, **carried, "started": time.time(),
        "counters": {"copied": 0, "embedded": 0, "kept": 0, "skipped": 0, "repaired": 0, "deleted": 0,
                     "carried_after_switch": 0, "completed_after_switch": 0},
        "passes": [],
    }


def carried_over(previous: dict[str, Any] | None, exists) -> dict[str, Any]:
    """What a new job keeps of the one before: the alias's history, and ``layouts``, the plan each
    earlier version (that ``exists``) was built with, so an application can still write to it."""
    if previous is None:
        return {"history": [], "layouts": {}}
    layouts = dict(previous.get("layouts", {}))
    if previous["phase"] == DONE:
        layouts[previous["plan"]["target"]] = previous["plan"]
    return {"history": previous.get("history", []),
            "layouts": {name: plan for name, plan in layouts.items() if exists(name)}}


def layout_of(job: dict[str, Any], collection: str) -> dict[str, Any] | None:
    """The plan ``collection`` was built with: the job's own target or an earlier version."""
    if job["plan"]["target"] == collection:
        return job["plan"]
    return job.get("layouts", {}).get(collection)


def is_version_of(alias: str, collection: str) -> bool:
    return collection.startswith(f"{alias}-safeclip-v")


def record_history(job: dict[str, Any], action: str, collection: str, previous: str | None) -> None:
    job.setdefault("history", []).append(
        {"action": action, "collection": collection, "previous": previous, "at": time.time()})


# --- failures ---

def failures_key(alias: str) -> str:
    return f"reindex:{alias}:failures"


def read_failures(store: VectorStore, alias: str) -> dict[str, dict[str, Any]]:
    """``{id key: {"id", "reason", "hash"}}``; the key is the id as JSON text."""
    document = store.read_state(failures_key(alias))
    return document["failures"] if document else {}


def write_failures(store: VectorStore, alias: str, failures: dict[str, dict[str, Any]]) -> None:
    store.write_state(failures_key(alias), {"failures": failures})


def failure_key(point_id: PointId) -> str:
    return f"i{point_id}" if isinstance(point_id, int) else f"u{point_id}"


# --- the base of the post-switch comparison ---

def write_base(store: VectorStore, alias: str, keys: np.ndarray, hashes: np.ndarray) -> int:
    """Store the sorted id keys and payload hashes in chunks; returns the number of chunks."""
    chunks = max(1, -(-len(keys) // BASE_CHUNK))
    for index in range(chunks):
        part = slice(index * BASE_CHUNK, (index + 1) * BASE_CHUNK)
        store.write_state(f"reindex:{alias}:base:{index}", {
            "keys": base64.b64encode(keys[part].astype("<u8").tobytes()).decode("ascii"),
            "hashes": base64.b64encode(hashes[part].astype("<u8").tobytes()).decode("ascii")})
    return chunks


def read_base(store: VectorStore, alias: str, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    keys, hashes = [], []
    for index in range(chunks):
        document = store.read_state(f"reindex:{alias}:base:{index}")
        if document is None:
            raise KeyError(index)
        keys.append(np.frombuffer(base64.b64decode(document["keys"]), dtype="<u8"))
        hashes.append(np.frombuffer(base64.b64decode(document["hashes"]), dtype="<u8"))
    return np.concatenate(keys).astype(np.uint64), np.concatenate(hashes).astype(np.uint64)


def delete_base(store: VectorStore, alias: str, chunks: int) -> None:
    for index in range(chunks):
        store.delete_state(f"reindex:{alias}:base:{index}")
