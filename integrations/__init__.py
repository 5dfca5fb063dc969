"""Vector-database integrations (installed as ``safeclip_sdk.integrations``).

``open_store(target)`` is the one entry point: a new folder opens Qdrant's embedded Rust engine
(qdrant-edge, :mod:`.qdrant_edge`), a folder made by qdrant-client's local mode and ``":memory:"``
open that local mode, an ``http(s)://host:6333`` URL a Qdrant server (API key from the environment
variable ``QDRANT_API_KEY``), a ``postgresql://user@host:5432/db`` URL a PostgreSQL database with
pgvector (password from ``PGPASSWORD``, ``~/.pgpass`` or ``SAFECLIP_PG_DSN``). All return a
:class:`~.base.VectorStore`.
"""

from __future__ import annotations

import importlib.util
import os
import re

from .base import (DEFAULT_VECTOR, PG_DSN_ENV, Hit, MissingCollectionError, Point, Range, StoreError, VectorSpec,
                   VectorStore)
from .retry import RetryPolicy

__all__ = ["open_store", "PG_DSN_ENV", "VectorStore", "VectorSpec", "Point", "Hit", "Range", "StoreError",
           "MissingCollectionError", "RetryPolicy", "DEFAULT_VECTOR"]


def open_store(target: str | os.PathLike | VectorStore, *, timeout: float = 10.0, retries: int = 4,
               retry_base_delay: float = 0.5, retry_max_delay: float = 10.0) -> VectorStore:
    """Open the vector database at ``target``.

    Args:
        target: a local folder (one process per folder: a new folder, or one it made, opens
            with Qdrant's embedded engine, qdrant-edge, when installed; a folder made by
            qdrant-client's local mode keeps opening with it), ``":memory:"`` (local mode), or
            a Qdrant server URL such as ``https://host:6333``; an already open
            store is returned as it is; ``postgresql://`` (or ``postgres://``) URLs open
            PostgreSQL with pgvector.
        timeout: seconds a server request may take (rounded up to whole seconds).
        retries: how many times a call that failed transiently (connection error, timeout,
            HTTP 429 or 5xx) is tried again, with exponential backoff and full jitter.
        retry_base_delay, retry_max_delay: the first retry waits up to ``retry_base_delay``
            seconds, each further one up to twice as long, never more than ``retry_max_delay``.
    """
    if isinstance(target, VectorStore):
        return target
    policy = RetryPolicy(attempts=retries + 1, base_delay=retry_base_delay, max_delay=retry_max_delay)
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        from .pgvector import PgVectorStore

        return PgVectorStore.open(target, timeout=timeout, retry=policy)
    if _embedded_engine(target) == "edge":
        from .qdrant_edge import EdgeStore

        return EdgeStore.open(target)
    from .qdrant import QdrantStore

    return QdrantStore.open(target, timeout=timeout, retry=policy)


def _embedded_engine(target: str | os.PathLike) -> str | None:
    """Which embedded engine a folder target opens with: ``edge`` (Qdrant's Rust engine, for new
    folders and its own), ``local`` (qdrant-client's local mode: folders it made, ``":memory:"``,
    or any folder when qdrant-edge is not installed), None for a server URL."""
    text = os.fspath(target)
    if text.startswith(("http://", "https://")) or re.fullmatch(r"[\w.-]+:\d+", text):
        return None
    if text == ":memory:" or importlib.util.find_spec("qdrant_edge") is None:
        return "local"
    from .qdrant_edge import folder_engine

    return "local" if folder_engine(text) == "local" else "edge"
