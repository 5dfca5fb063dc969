"""One interface over the vector databases safeclip reindexes and searches.

A reindex, a verification and a search are written once against :class:`VectorStore`; each
database (Qdrant today) is an adapter in its own module. The vocabulary is Qdrant's, the most
specific of the stores we serve: a *collection* holds *points* (an id, a JSON payload and one or
more vectors), readers reach it through an *alias* that can be repointed atomically.

Vectors are keyed by name; :data:`DEFAULT_VECTOR` (``""``) is a collection's single unnamed
vector. Ids are non-negative integers or UUID strings; :meth:`VectorStore.scroll` returns them in
ascending order (integers before UUIDs), which is what id ranges and resumable cursors rely on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safeclip_sdk.errors import SafeclipError

PointId = int | str
#: the environment variable that may hold a whole PostgreSQL connection string (password included)
PG_DSN_ENV = "SAFECLIP_PG_DSN"
DEFAULT_VECTOR = ""
DISTANCES = ("cosine", "dot", "euclid")


@dataclass(frozen=True)
class VectorSpec:
    """One vector of a collection: its size and distance (``cosine``, ``dot`` or ``euclid``).

    ``options`` carries store-specific settings to keep when a collection is recreated
    (Qdrant: ``on_disk``, per-vector HNSW and quantization config, as plain dicts).
    """

    size: int
    distance: str
    options: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Point:
    """A point as stored: ``vectors`` maps a vector name to float32 values."""

    id: PointId
    payload: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Hit:
    """A search result: larger ``score`` is closer."""

    id: PointId
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Range:
    """Payload filter: ``field`` lies in ``[gte, lt)``; either bound may be None."""

    field: str
    gte: float | None = None
    lt: float | None = None


class StoreError(SafeclipError):
    """A store call that failed (after its retries, if the failure was transient).

    The message is one line that names the store, never a secret.
    """


class MissingCollectionError(StoreError):
    """The collection (or alias) a call names does not exist."""


class VectorStore(ABC):
    """A vector database, as safeclip uses it."""

    #: a printable description of the store (``qdrant local ./db``, ``https://host:6333``); never a key
    name: str

    # --- collections and aliases ---

    @abstractmethod
    def collection_exists(self, name: str) -> bool:
        """True for a collection (not an alias) called ``name``."""

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def vector_specs(self, collection: str) -> dict[str, VectorSpec]:
        """The collection's vectors by name (``DEFAULT_VECTOR`` for an unnamed single vector)."""

    @abstractmethod
    def create_collection(self, name: str, vectors: dict[str, VectorSpec], *, like: str | None = None) -> None:
        """Create ``name`` with ``vectors``; with ``like``, copy that collection's other settings
        (payload indexes, index and optimizer settings) where the store has them."""

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` points at, or None when no such alias exists."""

    @abstractmethod
    def switch_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step (created if it did not exist)."""

    @abstractmethod
    def delete_alias(self, alias: str) -> None: ...

    # --- points ---

    @abstractmethod
    def count(self, collection: str) -> int:
        """Exact number of points."""

    @abstractmethod
    def scroll(self, collection: str, *, start: PointId | None = None, limit: int = 256,
               with_vectors: bool | Sequence[str] = False,
               with_payload: bool = True) -> tuple[list[Point], PointId | None]:
        """Up to ``limit`` points with ids ``>= start`` in ascending id order, and the id the next
        page starts at (None after the last page)."""

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[PointId], *,
                 with_vectors: bool | Sequence[str] = False) -> list[Point]:
        """The points of ``ids`` that exist (order not guaranteed)."""

    @abstractmethod
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Write whole points (payload and every vector replaced), waiting until they are applied."""

    @abstractmethod
    def delete(self, collection: str, ids: Iterable[PointId]) -> None: ...

    @abstractmethod
    def query(self, collection: str, vector: np.ndarray, *, using: str = DEFAULT_VECTOR, limit: int = 10,
              payload_range: Range | Sequence[Range] | None = None) -> list[Hit]:
        """The ``limit`` nearest points to ``vector`` under the vector's distance, among the points
        whose payload satisfies every given range."""

    # --- job state, kept in the database itself so any machine can resume ---

    @abstractmethod
    def read_state(self, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def write_state(self, key: str, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def delete_state(self, key: str) -> None: ...

    def finish_load(self, collection: str) -> None:
        """Called once a bulk load into ``collection`` is complete, before it is verified and
        served: build what a store defers while loading (an HNSW index after the bulk insert).
        Qdrant indexes as it goes, so by default there is nothing to do."""

    def close(self) -> None:
        """Release connections or the local storage lock."""
