"""Qdrant's embedded Rust engine (qdrant-edge) behind :class:`VectorStore`: a folder, no server.

qdrant-edge runs Qdrant's storage in-process (segments, HNSW, a write-ahead log) as one *shard*
per folder, with no collections, aliases or job state. This store gives a folder those:

- ``safeclip-edge.json``: the marker that says the folder is an edge store (qdrant-client's local
  mode writes ``meta.json`` instead; :func:`folder_engine` tells them apart);
- ``collections/<name>/``: one shard per collection, and ``collections/<name>.json`` its vector
  specs; the JSON file is what makes a collection exist, so creating and dropping are atomic
  (the shard is built before the file is renamed into place, and the file goes before the shard);
- ``aliases.json``: every alias, rewritten whole and renamed over the old file on each switch (an
  atomic step; readers in the process see the old or the new map, never no alias);
- ``state/<key>.json``: job state, each written the same way.

One process may open a folder (a lock file; each shard's WAL is locked too). Writes are durable
when they return (the shard's WAL). The engine builds HNSW segments only when asked:
:meth:`EdgeStore.finish_load` runs its optimizer, so searches after a bulk load are indexed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .base import (DEFAULT_VECTOR, Hit, MissingCollectionError, Point, PointId, Range, StoreError, VectorSpec,
                   VectorStore)

try:
    import qdrant_edge as edge
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the embedded Qdrant engine needs qdrant-edge-py: pip install qdrant-edge-py") from error

MARKER = "safeclip-edge.json"
FORMAT = 1
_DISTANCES = {"cosine": edge.Distance.Cosine, "dot": edge.Distance.Dot, "euclid": edge.Distance.Euclid}


def folder_engine(folder: str | os.PathLike) -> str | None:
    """``edge`` (this store), ``local`` (qdrant-client's local mode) or None (empty or missing)."""
    path = Path(folder)
    if (path / MARKER).is_file():
        return "edge"
    if (path / "meta.json").is_file() or (path / "collection").is_dir():
        return "local"
    return None


def _write_atomically(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class EdgeStore(VectorStore):
    """A folder of qdrant-edge shards (see the module's docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.name = f"qdrant edge {folder}"
        self._lock = threading.RLock()
        self._shards: dict[str, Any] = {}
        self._specs: dict[str, dict[str, VectorSpec]] = {}
        self._lock_file = open(folder / ".lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreError(f"{self.name}: the folder is open in another process (the embedded engine allows one "
                             f"process per folder: stop the other process, or use a Qdrant server)") from None
        aliases = folder / "aliases.json"
        self._aliases: dict[str, str] = json.loads(aliases.read_text()) if aliases.exists() else {}

    @classmethod
    def open(cls, folder: str | os.PathLike) -> EdgeStore:
        """Open (or create) the store in ``folder``; a folder of qdrant-client's local mode is refused."""
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise StoreError(f"qdrant edge {path}: not a folder")
        engine = folder_engine(path)
        if engine == "local":
            raise StoreError(f"qdrant edge {path}: the folder holds qdrant-client's local mode, not the embedded "
                             f"engine (open it with open_store)")
        if engine is None:
            (path / "collections").mkdir(parents=True, exist_ok=True)
            (path / "state").mkdir(exist_ok=True)
            _write_atomically(path / MARKER, {"engine": "qdrant-edge", "format": FORMAT})
        return cls(path)

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.folder)!r})"

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
            if not self._lock_file.closed:
                self._lock_file.close()

    # --- collections and aliases ---

    def _spec_file(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise StoreError(f"{self.name}: '{name}' is not a valid collection name")
        return self.folder / "collections" / f"{name}.json"

    def collection_exists(self, name: str) -> bool:
        return self._spec_file(name).is_file()

    def list_collections(self) -> list[str]:
        return sorted(p.stem for p in (self.folder / "collections").glob("*.json"))

    def vector_specs(self, collection: str) -> dict[str, VectorSpec]:
        name = self._resolve(collection)
        with self._lock:
            if name not in self._specs:
                saved = json.loads(self._spec_file(name).read_text())
                self._specs[name] = {vector: VectorSpec(s["size"], s["distance"], s.get("options", {}))
                                     for vector, s in saved.items()}
            return self._specs[name]

    def create_collection(self, name: str, vectors: dict[str, VectorSpec], *, like: str | None = None) -> None:
        spec_file = self._spec_file(name)
        if spec_file.exists():
            raise StoreError(f"{self.name}: collection '{name}' already exists")
        for vector, spec in vectors.items():
            if spec.distance not in _DISTANCES:
                raise StoreError(f"{self.name}: vector '{vector}' has distance '{spec.distance}' (expected one of: "
                                 f"{', '.join(_DISTANCES)})")
        if like is not None:
            self.vector_specs(like)  # the source must exist; it has no other settings to copy
        folder = spec_file.with_suffix("")
        shutil.rmtree(folder, ignore_errors=True)  # a shard left by a create that died before its spec file
        config = edge.EdgeConfig(vectors={vector: edge.EdgeVectorParams(spec.size, _DISTANCES[spec.distance])
                                          for vector, spec in vectors.items()})
        with self._lock:
            self._shards[name] = self._edge_call("create collection", name, edge.EdgeShard.create, str(folder),
                                                 config)
            _write_atomically(spec_file, {vector: {"size": spec.size, "distance": spec.distance,
                                                   "options": spec.options} for vector, spec in vectors.items()})

    def drop_collection(self, name: str) -> None:
        target = self.alias_target(name)
        if target is not None:
            raise StoreError(f"{self.name}: '{name}' is an alias of '{target}', not a collection; "
                             f"drop the collection itself")
        spec_file = self._spec_file(name)
        with self._lock:
            spec_file.unlink(missing_ok=True)
            self._specs.pop(name, None)
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(spec_file.with_suffix(""), ignore_errors=True)

    def alias_target(self, alias: str) -> str | None:
        return self._aliases.get(alias)

    def switch_alias(self, alias: str, collection: str) -> None:
        if not self.collection_exists(collection):
            raise MissingCollectionError(f"{self.name}: cannot point alias '{alias}' at '{collection}': "
                                         f"no such collection")
        self._save_aliases({**self._aliases, alias: collection})

    def delete_alias(self, alias: str) -> None:
        self._save_aliases({k: v for k, v in self._aliases.items() if k != alias})

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        with self._lock:
            _write_atomically(self.folder / "aliases.json", aliases)
            self._aliases = aliases  # one assignment: readers see the old map or the new one

    # --- points ---

    def count(self, collection: str) -> int:
        return self._edge_call("count", collection, self._shard(collection).count, edge.CountRequest(exact=True))

    def scroll(self, collection: str, *, start: PointId | None = None, limit: int = 256,
               with_vectors: bool | Sequence[str] = False,
               with_payload: bool = True) -> tuple[list[Point], PointId | None]:
        request = edge.ScrollRequest(offset=start, limit=limit, with_payload=with_payload,
                                     with_vector=_vector_selector(with_vectors))
        records, next_start = self._edge_call("scroll", collection, self._shard(collection).scroll, request)
        return [_point(record) for record in records], _plain_id(next_start)

    def retrieve(self, collection: str, ids: Sequence[PointId], *,
                 with_vectors: bool | Sequence[str] = False) -> list[Point]:
        ids = list(ids)
        if not ids:
            return []
        records = self._edge_call("retrieve", collection, self._shard(collection).retrieve, ids, True,
                                  _vector_selector(with_vectors))
        return [_point(record) for record in records]

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        operation = edge.UpdateOperation.upsert_points(
            [edge.Point(p.id, {k: np.asarray(v, dtype=np.float32) for k, v in p.vectors.items()}, p.payload)
             for p in points])
        self._edge_call("upsert", collection, self._shard(collection).update, operation)

    def delete(self, collection: str, ids: Iterable[PointId]) -> None:
        ids = list(ids)
        if ids:
            self._edge_call("delete", collection, self._shard(collection).update,
                            edge.UpdateOperation.delete_points(ids))

    def query(self, collection: str, vector: np.ndarray, *, using: str = DEFAULT_VECTOR, limit: int = 10,
              payload_range: Range | Sequence[Range] | None = None) -> list[Hit]:
        specs = self.vector_specs(collection)
        if using not in specs:
            known = ", ".join(_label(n) for n in specs) or "none"
            raise StoreError(f"{self.name}: collection '{self._resolve(collection)}' has no {_label(using)} "
                             f"(it has: {known})")
        values = np.asarray(vector, dtype=np.float32).reshape(-1)
        request = edge.QueryRequest(limit=limit, query=edge.Query.Nearest(values, using=using),
                                    filter=_range_filter(payload_range), with_payload=True)
        points = self._edge_call("query", collection, self._shard(collection).query, request)
        sign = -1.0 if specs[using].distance == "euclid" else 1.0  # Qdrant scores euclid as a distance
        return [Hit(_plain_id(p.id), sign * float(p.score), p.payload or {}) for p in points]

    def finish_load(self, collection: str) -> None:
        """Build the HNSW segments (the engine's optimizer, which it runs only when asked)."""
        shard = self._shard(collection)
        self._edge_call("flush", collection, shard.flush)
        self._edge_call("optimize", collection, shard.optimize)

    # --- job state ---

    def _state_file(self, key: str) -> Path:
        return self.folder / "state" / f"{quote(key, safe='')}.json"

    def read_state(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_file(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def write_state(self, key: str, state: dict[str, Any]) -> None:
        with self._lock:
            _write_atomically(self._state_file(key), state)

    def delete_state(self, key: str) -> None:
        self._state_file(key).unlink(missing_ok=True)

    # --- plumbing ---

    def _resolve(self, name: str) -> str:
        target = self._aliases.get(name, name)
        if not self._spec_file(target).is_file():
            raise MissingCollectionError(f"{self.name}: collection '{name}' not found")
        return target

    def _shard(self, collection: str):
        name = self._resolve(collection)
        with self._lock:
            if name not in self._shards:
                self._shards[name] = self._edge_call("open collection", name, edge.EdgeShard.load,
                                                     str(self._spec_file(name).with_suffix("")))
            return self._shards[name]

    def _edge_call(self, what: str, collection: str, function, *args):
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - the engine raises plain exceptions; each becomes one line
            message = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise StoreError(f"{self.name}: {what} '{collection}' failed: {message}") from None


def _label(vector: str) -> str:
    return "unnamed vector" if vector == DEFAULT_VECTOR else f"vector '{vector}'"


def _vector_selector(with_vectors: bool | Sequence[str]) -> bool | list[str]:
    return with_vectors if isinstance(with_vectors, bool) else list(with_vectors)


def _plain_id(point_id) -> PointId | None:
    return str(point_id) if isinstance(point_id, uuid.UUID) else point_id


def _point(record) -> Point:
    vectors = record.vector or {}
    if not isinstance(vectors, dict):  # a point with only the unnamed vector comes back as a bare list
        vectors = {DEFAULT_VECTOR: vectors}
    return Point(_plain_id(record.id), record.payload or {},
                 {name: np.asarray(values, dtype=np.float32) for name, values in vectors.items()})


def _range_filter(payload_range: Range | Sequence[Range] | None):
    if payload_range is None:
        return None
    ranges = [payload_range] if isinstance(payload_range, Range) else list(payload_range)
    return edge.Filter(must=[edge.FieldCondition(key=r.field, range=edge.RangeFloat(gte=r.gte, lt=r.lt))
                             for r in ranges])
