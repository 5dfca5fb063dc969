"""Qdrant through qdrant-client: one code path for the embedded local mode and a Qdrant server.

Local mode (``QdrantClient(path=...)`` or ``":memory:"``) runs in-process, needs no server and is
what the tests use; a server URL (``https://host:6333``) reaches a cluster over REST, with the API
key read from ``QDRANT_API_KEY``. Every call goes through :meth:`QdrantStore._call`, which retries
transient failures (see :mod:`.retry`) and turns the client's errors into one-line
:class:`StoreError` messages that name the server but never the key.

Qdrant keeps a collection's single unnamed vector apart from named ones: its config is a bare
``VectorParams`` and its points carry a plain list. Here both are the name ``""``
(:data:`DEFAULT_VECTOR`); local mode also accepts ``""`` beside named vectors.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from .base import (DEFAULT_VECTOR, Hit, MissingCollectionError, Point, PointId, Range, StoreError,
                   VectorSpec, VectorStore)
from .retry import RetryPolicy, builtin_transient_reason, call_with_retries

try:
    import httpx
    from qdrant_client import QdrantClient, models
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the Qdrant integration needs qdrant-client: pip install 'safeclip[qdrant]'") from error

T = TypeVar("T")

API_KEY_ENV = "QDRANT_API_KEY"
#: the collection holding job state documents (one point per key, a 1-dim placeholder vector)
STATE_COLLECTION = "safeclip_state"
_STATE_NAMESPACE = uuid.UUID("5b0c5e0e-7d4a-4b8e-9a57-5afec11b0001")

_TO_QDRANT = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID,
              "manhattan": models.Distance.MANHATTAN}
_FROM_QDRANT = {value: key for key, value in _TO_QDRANT.items()}
# Qdrant scores these as distances (smaller is closer); Hit.score is negated so larger is closer
_DISTANCE_SCORES = ("euclid", "manhattan")
_VECTOR_OPTIONS = ("on_disk", "hnsw_config", "quantization_config", "datatype")
_NOT_FOUND = re.compile(r"collection .* (not found|doesn't exist|does not exist)", re.IGNORECASE)


class QdrantStore(VectorStore):
    """A Qdrant database, local or remote. Build it with :meth:`open` (or ``open_store``)."""

    def __init__(self, client: QdrantClient, *, name: str, retry: RetryPolicy | None = None,
                 local: bool = False, secret: str | None = None):
        self._client = client
        self.name = name
        self.local = local
        self._retry = retry or RetryPolicy()
        self._secret = secret
        # local mode is a plain in-process data structure: one call at a time
        self._lock = threading.RLock() if local else None
        self._distances: dict[tuple[str, str], str] = {}

    @classmethod
    def open(cls, target: str | os.PathLike, *, timeout: float = 10.0,
             retry: RetryPolicy | None = None) -> QdrantStore:
        """Connect to ``target``: a folder (local mode), ``":memory:"`` or an ``http(s)://`` URL.

        A server's API key is read from the environment variable ``QDRANT_API_KEY``; a URL
        without a port uses its scheme's default port (Qdrant listens on 6333: give it).
        """
        target = os.fspath(target)
        if target == ":memory:":
            return cls(QdrantClient(location=":memory:"), name="qdrant :memory:", retry=retry, local=True)
        if target.startswith(("http://", "https://")):
            return cls._open_server(target, timeout, retry)
        if re.fullmatch(r"[\w.-]+:\d+", target):
            raise StoreError(f"qdrant target '{target}' looks like a server address: write http://{target} "
                             f"or https://{target} (a plain name is a local folder)")
        name = f"qdrant local {target}"
        try:
            # calls are serialised by our lock, so SQLite may be used from any thread (macOS builds
            # of SQLite would otherwise refuse a connection made in another thread)
            client = QdrantClient(path=target, force_disable_check_same_thread=True)
        except RuntimeError as error:
            if "already accessed" in str(error):
                raise StoreError(f"{name}: the folder is open in another process (local mode allows one "
                                 f"client per folder: stop the other process, or use a Qdrant server)") from None
            raise
        except OSError as error:
            raise StoreError(f"{name}: cannot open the folder ({error.strerror or error})") from None
        return cls(client, name=name, retry=retry, local=True)

    @classmethod
    def _open_server(cls, url: str, timeout: float, retry: RetryPolicy | None) -> QdrantStore:
        parts = urlsplit(url)
        if parts.username or parts.password or parts.query:
            raise StoreError(f"qdrant {parts.scheme}://{parts.hostname}: credentials or query parameters in the "
                             f"URL are refused; put the API key in the environment variable {API_KEY_ENV}")
        name = f"qdrant {url.rstrip('/')}"
        api_key = os.environ.get(API_KEY_ENV) or None
        try:
            client = QdrantClient(url=url, port=parts.port, api_key=api_key, timeout=timeout,
                                  check_compatibility=False)
        except ValueError as error:
            raise StoreError(f"{name}: {_redact(str(error), api_key)}") from None
        return cls(client, name=name, retry=retry, secret=api_key)

    def __repr__(self) -> str:
        return f"QdrantStore({self.name!r})"

    def close(self) -> None:
        self._client.close()

    # --- collections and aliases ---

    def collection_exists(self, name: str) -> bool:
        return self._call("check collection", name,
                          lambda: self._client.collection_exists(name) and name not in self._aliases())

    def list_collections(self) -> list[str]:
        names = self._call("list collections", None, lambda: self._client.get_collections().collections)
        return sorted(c.name for c in names if c.name != STATE_COLLECTION)

    def vector_specs(self, collection: str) -> dict[str, VectorSpec]:
        params = self._info(collection).config.params
        if params.sparse_vectors:
            raise StoreError(f"{self.name}: collection '{collection}' has sparse vectors "
                             f"({', '.join(params.sparse_vectors)}), which safeclip does not handle")
        vectors = params.vectors
        if vectors is None:
            return {}
        named = vectors if isinstance(vectors, dict) else {DEFAULT_VECTOR: vectors}
        specs = {}
        for vector_name, vector in named.items():
            if vector.multivector_config is not None:
                raise StoreError(f"{self.name}: vector '{vector_name}' of '{collection}' is a multivector, "
                                 f"which safeclip does not handle")
            options = vector.model_dump(include=set(_VECTOR_OPTIONS), exclude_none=True, mode="json")
            specs[vector_name] = VectorSpec(vector.size, _FROM_QDRANT[vector.distance], options)
        return specs

    def create_collection(self, name: str, vectors: dict[str, VectorSpec], *, like: str | None = None) -> None:
        """Create ``name``; with ``like``, also copy that collection's HNSW, optimizer, WAL,
        quantization, sharding and strict-mode settings and its payload indexes (a server has
        them; local mode keeps none of them). Per-vector settings travel in ``VectorSpec.options``."""
        settings, indexes = collection_settings(self._info(like)) if like else ({}, {})
        config = vectors_config(vectors)
        first_try = True

        def create():
            nonlocal first_try
            # a timed-out attempt may have created it: then the retry finds it there
            if not first_try and self._client.collection_exists(name):
                return
            first_try = False
            self._client.create_collection(name, vectors_config=config, **settings)

        self._call("create collection", name, create)
        for field_name, schema in indexes.items():
            self._call("create payload index", name,
                       lambda: self._client.create_payload_index(name, field_name, field_schema=schema, wait=True))
        self._forget_distances()

    def create_payload_index(self, collection: str, field_name: str, kind: str = "float") -> None:
        """Index a payload field for filtering (``float``, ``integer``, ``keyword``, ...) on a server;
        local mode has no payload indexes, so there it does nothing."""
        kinds = [kind.value for kind in models.PayloadSchemaType]
        if kind not in kinds:
            raise StoreError(f"unknown payload index kind '{kind}' (choose from {', '.join(kinds)})")
        if self.local:
            return
        schema = models.PayloadSchemaType(kind)
        self._call("create payload index", collection, lambda: self._client.create_payload_index(
            collection, field_name, field_schema=schema, wait=True))

    def drop_collection(self, name: str) -> None:
        target = self.alias_target(name)
        if target is not None:
            raise StoreError(f"{self.name}: '{name}' is an alias of '{target}', not a collection; "
                             f"drop the collection itself")
        self._call("drop collection", name, lambda: self._client.delete_collection(name))
        self._forget_distances()

    def alias_target(self, alias: str) -> str | None:
        return self._call("read aliases", None, self._aliases).get(alias)

    def switch_alias(self, alias: str, collection: str) -> None:
        def switch():
            aliases = self._aliases()
            if collection in aliases or not self._client.collection_exists(collection):
                raise MissingCollectionError(f"{self.name}: cannot point alias '{alias}' at '{collection}': "
                                             f"no such collection")
            changes: list[Any] = []
            if alias in aliases:
                changes.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
            changes.append(models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
            self._client.update_collection_aliases(change_aliases_operations=changes)  # one atomic step

        self._call("switch alias", alias, switch)
        self._forget_distances()

    def delete_alias(self, alias: str) -> None:
        def delete():
            if alias in self._aliases():
                self._client.update_collection_aliases(change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))])

        self._call("delete alias", alias, delete)
        self._forget_distances()

    # --- points ---

    def count(self, collection: str) -> int:
        return self._call("count", collection, lambda: self._client.count(collection, exact=True).count)

    def scroll(self, collection: str, *, start: PointId | None = None, limit: int = 256,
               with_vectors: bool | Sequence[str] = False,
               with_payload: bool = True) -> tuple[list[Point], PointId | None]:
        records, next_start = self._call("scroll", collection, lambda: self._client.scroll(
            collection, limit=limit, offset=start, with_payload=with_payload,
            with_vectors=_vector_selector(with_vectors)))
        return [_point(record) for record in records], next_start

    def retrieve(self, collection: str, ids: Sequence[PointId], *,
                 with_vectors: bool | Sequence[str] = False) -> list[Point]:
        ids = list(ids)
        if not ids:
            return []
        records = self._call("retrieve", collection, lambda: self._client.retrieve(
            collection, ids=ids, with_payload=True, with_vectors=_vector_selector(with_vectors)))
        return [_point(record) for record in records]

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        # Qdrant takes a bare list for a collection with only the unnamed vector, and a dict when it
        # also has named ones (a side-by-side collection): only points with just "" are ambiguous.
        only_unnamed = any(set(p.vectors) == {DEFAULT_VECTOR} for p in points)
        named = only_unnamed and set(self.vector_specs(collection)) != {DEFAULT_VECTOR}
        structs = [models.PointStruct(id=p.id, vector=_vector_struct(p.vectors, named=named), payload=p.payload)
                   for p in points]
        if structs:
            self._call("upsert", collection, lambda: self._client.upsert(collection, points=structs, wait=True))

    def delete(self, collection: str, ids: Iterable[PointId]) -> None:
        ids = list(ids)
        if ids:
            self._call("delete", collection, lambda: self._client.delete(
                collection, points_selector=models.PointIdsList(points=ids), wait=True))

    def query(self, collection: str, vector: np.ndarray, *, using: str = DEFAULT_VECTOR, limit: int = 10,
              payload_range: Range | Sequence[Range] | None = None) -> list[Hit]:
        distance = self._distance(collection, using)
        query = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        response = self._call("query", collection, lambda: self._client.query_points(
            collection, query=query, using=using or None, limit=limit, query_filter=_range_filter(payload_range),
            with_payload=True, with_vectors=False))
        sign = -1.0 if distance in _DISTANCE_SCORES else 1.0
        return [Hit(p.id, sign * float(p.score), p.payload or {}) for p in response.points]

    # --- job state ---

    def read_state(self, key: str) -> dict[str, Any] | None:
        try:
            records = self._call("read state", STATE_COLLECTION, lambda: self._client.retrieve(
                STATE_COLLECTION, ids=[_state_id(key)], with_payload=True))
        except MissingCollectionError:
            return None
        return json.loads(records[0].payload["state"]) if records else None

    def write_state(self, key: str, state: dict[str, Any]) -> None:
        point = models.PointStruct(id=_state_id(key), vector=[1.0], payload={"key": key, "state": json.dumps(state)})
        write = lambda: self._client.upsert(STATE_COLLECTION, points=[point], wait=True)  # noqa: E731
        try:
            self._call("write state", STATE_COLLECTION, write)
        except MissingCollectionError:
            self._create_state_collection()
            self._call("write state", STATE_COLLECTION, write)

    def delete_state(self, key: str) -> None:
        try:
            self._call("delete state", STATE_COLLECTION, lambda: self._client.delete(
                STATE_COLLECTION, points_selector=models.PointIdsList(points=[_state_id(key)]), wait=True))
        except MissingCollectionError:
            pass

    def _create_state_collection(self) -> None:
        def create():
            if not self._client.collection_exists(STATE_COLLECTION):  # another process may be first
                self._client.create_collection(STATE_COLLECTION, vectors_config=models.VectorParams(
                    size=1, distance=models.Distance.DOT))

        self._call("create collection", STATE_COLLECTION, create)

    # --- plumbing ---

    def _info(self, collection: str):
        return self._call("read collection", collection, lambda: self._client.get_collection(collection))

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}

    def _distance(self, collection: str, using: str) -> str:
        key = (collection, using)
        if key not in self._distances:
            specs = self.vector_specs(collection)
            if using not in specs:
                known = ", ".join(_vector_label(n) for n in specs) or "none"
                raise StoreError(f"{self.name}: collection '{collection}' has no {_vector_label(using)} "
                                 f"(it has: {known})")
            self._distances[key] = specs[using].distance
        return self._distances[key]

    def _forget_distances(self) -> None:
        self._distances.clear()

    def _call(self, what: str, collection: str | None, operation: Callable[[], T]) -> T:
        """Run one client operation with retries; errors become one-line StoreErrors."""
        label = f"{what} '{collection}'" if collection else what
        try:
            if self._lock is None:
                return call_with_retries(operation, what=label, store=self.name, policy=self._retry,
                                         classify=transient_reason)
            with self._lock:
                return call_with_retries(operation, what=label, store=self.name, policy=self._retry,
                                         classify=transient_reason)
        except StoreError as error:
            raise type(error)(_redact(str(error), self._secret)) from None
        except UnexpectedResponse as error:
            if error.status_code == 404 and collection:
                raise MissingCollectionError(f"{self.name}: collection '{collection}' not found") from None
            detail = _server_message(error)
            raise StoreError(_redact(f"{self.name}: {label} failed: HTTP {error.status_code} {detail}",
                                     self._secret)) from None
        except ValueError as error:  # local mode reports bad requests as ValueError
            message = _first_line(error)
            if collection and _NOT_FOUND.search(message):
                raise MissingCollectionError(f"{self.name}: collection '{collection}' not found") from None
            raise StoreError(_redact(f"{self.name}: {label} failed: {message}", self._secret)) from None


def transient_reason(error: BaseException) -> str | None:
    """Why a qdrant-client error is worth retrying (timeouts, connection errors, HTTP 429/5xx)."""
    if isinstance(error, ResponseHandlingException):  # the REST client's wrapper around httpx errors
        error = error.source
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.TransportError):
        return f"cannot connect: {_first_line(error)}"
    if isinstance(error, UnexpectedResponse) and error.status_code is not None:
        if error.status_code == 429:
            return "HTTP 429 too many requests"
        if error.status_code >= 500:
            return f"HTTP {error.status_code} {error.reason_phrase}".strip()
    return builtin_transient_reason(error)


# --- conversions between safeclip's types and qdrant-client's models ---

def vectors_config(vectors: dict[str, VectorSpec]) -> models.VectorParams | dict[str, models.VectorParams]:
    """qdrant-client's ``vectors_config`` for ``vectors`` (a bare VectorParams for only ``""``)."""
    params = {name: models.VectorParams.model_validate(
        {**spec.options, "size": spec.size, "distance": _TO_QDRANT[spec.distance]}) for name, spec in vectors.items()}
    if set(params) == {DEFAULT_VECTOR}:
        return params[DEFAULT_VECTOR]
    return params


def collection_settings(info: models.CollectionInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``create_collection`` keyword arguments and payload indexes that reproduce ``info``'s
    collection-level settings (everything but the vectors, which the caller chooses)."""
    config = info.config
    params = config.params
    settings: dict[str, Any] = {
        "shard_number": params.shard_number,
        "sharding_method": params.sharding_method,
        "replication_factor": params.replication_factor,
        "write_consistency_factor": params.write_consistency_factor,
        "on_disk_payload": params.on_disk_payload,
        "hnsw_config": _as_diff(config.hnsw_config, models.HnswConfigDiff),
        "optimizers_config": _as_diff(config.optimizer_config, models.OptimizersConfigDiff),
        "wal_config": _as_diff(config.wal_config, models.WalConfigDiff),
        "quantization_config": config.quantization_config,
        "strict_mode_config": _as_diff(config.strict_mode_config, models.StrictModeConfig),
        "metadata": config.metadata,
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    indexes = {field_name: index.params if index.params is not None else index.data_type
               for field_name, index in (info.payload_schema or {}).items()}
    return settings, indexes


def _as_diff(config, diff_type):
    """A full config model as the "diff" model ``create_collection`` takes (fields in common)."""
    if config is None:
        return None
    values = config.model_dump(exclude_none=True)
    return diff_type.model_validate({key: value for key, value in values.items() if key in diff_type.model_fields})


def _vector_selector(with_vectors: bool | Sequence[str]) -> bool | list[str]:
    return with_vectors if isinstance(with_vectors, bool) else list(with_vectors)


def _vector_struct(vectors: dict[str, np.ndarray], *, named: bool = False) -> list[float] | dict[str, list[float]]:
    as_lists = {name: np.asarray(v, dtype=np.float32).reshape(-1).tolist() for name, v in vectors.items()}
    if set(as_lists) == {DEFAULT_VECTOR} and not named:
        return as_lists[DEFAULT_VECTOR]
    return as_lists


def _point(record) -> Point:
    raw = record.vector
    if raw is None:
        vectors = {}
    elif isinstance(raw, dict):
        vectors = {name: np.asarray(v, dtype=np.float32) for name, v in raw.items()}
    else:  # a plain list is the unnamed vector
        vectors = {DEFAULT_VECTOR: np.asarray(raw, dtype=np.float32)}
    return Point(record.id, record.payload or {}, vectors)


def _range_filter(payload_range: Range | Sequence[Range] | None) -> models.Filter | None:
    if payload_range is None:
        return None
    ranges = [payload_range] if isinstance(payload_range, Range) else list(payload_range)
    return models.Filter(must=[models.FieldCondition(key=r.field, range=models.Range(gte=r.gte, lt=r.lt))
                               for r in ranges])


def _vector_label(name: str) -> str:
    return f"vector '{name}'" if name else "unnamed vector"


def _state_id(key: str) -> str:
    return str(uuid.uuid5(_STATE_NAMESPACE, key))


def _server_message(error: UnexpectedResponse) -> str:
    try:
        detail = error.structured()["status"]["error"]
    except (ValueError, KeyError, TypeError):
        detail = error.content[:200].decode("utf-8", "replace")
    return " ".join(str(detail).split())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
