"""PostgreSQL with pgvector, through psycopg 3: the same :class:`VectorStore` as Qdrant.

``open_store("postgresql://user@host:5432/db")`` connects; the password comes from ``PGPASSWORD``,
a ``~/.pgpass`` file or a whole connection string in ``SAFECLIP_PG_DSN`` (what ``safeclip ...
--pgvector`` reads when it is given without a value), and is never shown: the store's name is
``postgresql host:port/db``. The table layout is described in :mod:`.pgvector_schema`.

Every call goes through :meth:`PgVectorStore._call`: one connection guarded by a lock (so threads
may share a store), reconnected after a lost connection, transient failures (connection lost,
server shutting down, serialization failures, deadlocks) retried under :mod:`.retry`, and other
errors turned into one-line :class:`StoreError` messages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np

try:
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import errors, sql
    from psycopg.adapt import PyFormat
    from psycopg.types.json import Jsonb
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the PostgreSQL integration needs psycopg and pgvector: "
                      "pip install 'safeclip[pgvector]'") from error

from . import pgvector_catalog as catalog
from . import pgvector_connection as connection
from . import pgvector_schema as schema
from .base import (DEFAULT_VECTOR, PG_DSN_ENV, Hit, MissingCollectionError, Point, PointId, Range, StoreError,
                   VectorSpec, VectorStore)
from .retry import RetryPolicy, call_with_retries

T = TypeVar("T")
logger = logging.getLogger(__name__)

STATE_TABLE = "safeclip_state"


class PgVectorStore(VectorStore):
    """A PostgreSQL database with the pgvector extension. Build it with :meth:`open`."""

    def __init__(self, dsn: str, *, timeout: float = 10.0, retry: RetryPolicy | None = None):
        settings = connection.parse_dsn(dsn)
        self.name = connection.describe(settings)
        self._dsn = dsn
        self._secrets = [s for s in (settings.get("password"), os.environ.get("PGPASSWORD")) if s]
        self._connect_timeout = max(1, math.ceil(timeout))
        self._retry = retry or RetryPolicy()
        self._lock = threading.RLock()
        self._connection: psycopg.Connection | None = None

    @classmethod
    def open(cls, dsn: str | None = None, *, timeout: float = 10.0, retry: RetryPolicy | None = None) -> PgVectorStore:
        """Connect to ``dsn`` (a ``postgresql://`` URL), or to the one in ``SAFECLIP_PG_DSN``.

        The first connection is made here, so a wrong address or password fails at once.
        """
        dsn = dsn or os.environ.get(PG_DSN_ENV)
        if not dsn:
            raise StoreError(f"no PostgreSQL connection string: give postgresql://user@host:5432/db or set "
                             f"{PG_DSN_ENV}")
        store = cls(dsn, timeout=timeout, retry=retry)
        store._call("connect", None, lambda conn: None)
        return store

    def __repr__(self) -> str:
        return f"PgVectorStore({self.name!r})"

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # --- collections and aliases ---

    def collection_exists(self, name: str) -> bool:
        return self._call("check collection", name, lambda conn: catalog.relation_kind(conn, name) == "collection")

    def list_collections(self) -> list[str]:
        return self._call("list collections", None, catalog.collections)

    def vector_specs(self, collection: str) -> dict[str, VectorSpec]:
        return self._call("read collection", collection,
                          lambda conn: catalog.vector_specs(conn, catalog.table_of(conn, collection)))

    def create_collection(self, name: str, vectors: dict[str, VectorSpec], *, like: str | None = None) -> None:
        """Create the table ``name``; with ``like``, also the payload indexes of that collection.
        HNSW indexes are built by :meth:`finish_load`, after the points are in."""
        schema.check_name(name)
        if not vectors:
            raise StoreError(f"{self.name}: collection '{name}' needs at least one vector")
        columns = [sql.SQL("id numeric(39, 0) PRIMARY KEY"), sql.SQL("payload jsonb NOT NULL DEFAULT '{}'")]
        comments = []
        for vector, spec in vectors.items():
            kind = schema.column_type(spec)
            column = sql.Identifier(schema.vector_column(vector))
            columns.append(sql.SQL("{} {}({})").format(column, sql.SQL(kind), sql.Literal(int(spec.size))))
            comments.append(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                sql.Identifier(name), column, sql.Literal(schema.column_comment(spec, kind))))
        first_try = True

        def create(conn):
            nonlocal first_try
            if not first_try and catalog.relation_kind(conn, name) == "collection":  # a lost reply after it was made
                return
            first_try = False
            indexes = catalog.payload_indexes(conn, catalog.table_of(conn, like)) if like else {}
            with conn.transaction():
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(columns)))
                for comment in comments:
                    conn.execute(comment)
                catalog.set_payload_indexes(conn, name, indexes)
                for field_name, kind in indexes.items():
                    catalog.create_payload_index(conn, name, field_name, kind)

        self._call("create collection", name, create)

    def create_payload_index(self, collection: str, field_name: str, kind: str = "float") -> None:
        """Index a payload field (``float``/``integer``: numeric range filters; ``keyword``: text)."""
        if kind not in schema.PAYLOAD_INDEX_KINDS:
            known = ", ".join(schema.PAYLOAD_INDEX_KINDS)
            raise StoreError(f"unknown payload index kind '{kind}' (choose from {known})")

        def create(conn):
            table = catalog.table_of(conn, collection)
            indexes = catalog.payload_indexes(conn, table)
            if indexes.get(field_name) == kind:
                return
            with conn.transaction():
                catalog.create_payload_index(conn, table, field_name, kind)
                catalog.set_payload_indexes(conn, table, {**indexes, field_name: kind})

        self._call("create payload index", collection, create)

    def drop_collection(self, name: str) -> None:
        def drop(conn):
            kind = catalog.relation_kind(conn, name)
            if kind == "alias":
                raise StoreError(f"{self.name}: '{name}' is an alias of '{catalog.alias_target(conn, name)}', not a "
                                 f"collection; drop the collection itself")
            if kind != "collection":
                return
            with conn.transaction():
                for alias in [a for a, target in catalog.aliases(conn).items() if target == name]:
                    conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(alias)))
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))

        self._call("drop collection", name, drop)

    def alias_target(self, alias: str) -> str | None:
        return self._call("read aliases", None, lambda conn: catalog.alias_target(conn, alias))

    def switch_alias(self, alias: str, collection: str) -> None:
        """Repoint the view ``alias`` in one transaction: readers see the old table or the new one."""
        schema.check_name(alias, "alias")

        def switch(conn):
            with conn.transaction():
                if catalog.relation_kind(conn, collection) != "collection":
                    raise MissingCollectionError(f"{self.name}: cannot point alias '{alias}' at '{collection}': "
                                                 f"no such collection")
                kind = catalog.relation_kind(conn, alias)
                if kind not in (None, "alias"):
                    raise StoreError(f"{self.name}: cannot make '{alias}' an alias: a {kind} of that name exists")
                view = sql.Identifier(alias)
                conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
                conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(view, sql.Identifier(collection)))
                conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(
                    view, sql.Literal(json.dumps({"safeclip_alias": collection}))))

        self._call("switch alias", alias, switch)

    def delete_alias(self, alias: str) -> None:
        def delete(conn):
            if catalog.relation_kind(conn, alias) == "alias":
                conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(alias)))

        self._call("delete alias", alias, delete)

    # --- points ---

    def count(self, collection: str) -> int:
        return self._call("count", collection, lambda conn: conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(collection))).fetchone()[0])

    def scroll(self, collection: str, *, start: PointId | None = None, limit: int = 256,
               with_vectors: bool | Sequence[str] = False,
               with_payload: bool = True) -> tuple[list[Point], PointId | None]:
        lower = Decimal(schema.encode_id(start)) if start is not None else Decimal(0)

        def read(conn):
            with conn.transaction():
                names = schema.selected_vectors(catalog.pinned_specs(conn, collection), with_vectors)
                query = sql.SQL("SELECT id, {}, {} FROM {} WHERE id >= %s ORDER BY id LIMIT %s").format(
                    sql.SQL("payload" if with_payload else "NULL"), schema.vector_list(names),
                    sql.Identifier(collection))
                return names, conn.execute(query, [lower, limit + 1], binary=True).fetchall()

        names, rows = self._call("scroll", collection, read)
        points = [schema.row_to_point(row, names) for row in rows[:limit]]
        return points, (schema.decode_id(rows[limit][0]) if len(rows) > limit else None)

    def retrieve(self, collection: str, ids: Sequence[PointId], *,
                 with_vectors: bool | Sequence[str] = False) -> list[Point]:
        keys = [Decimal(schema.encode_id(i)) for i in ids]
        if not keys:
            return []

        def read(conn):
            with conn.transaction():
                names = schema.selected_vectors(catalog.pinned_specs(conn, collection), with_vectors)
                query = sql.SQL("SELECT id, payload, {} FROM {} WHERE id = ANY(%s)").format(
                    schema.vector_list(names), sql.Identifier(collection))
                return names, conn.execute(query, [keys], binary=True).fetchall()

        names, rows = self._call("retrieve", collection, read)
        return [schema.row_to_point(row, names) for row in rows]

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Write whole points in one transaction: the payload and EVERY vector column are replaced
        (a vector the point lacks becomes NULL), as a Qdrant upsert does."""
        if not points:
            return

        def write(conn):
            with conn.transaction(), conn.cursor() as cursor:
                specs = catalog.pinned_specs(conn, collection)
                rows = [schema.point_row(point, specs, self.name, collection) for point in points]
                columns = [sql.Identifier(schema.vector_column(n)) for n in specs]
                statement = sql.SQL("INSERT INTO {} (id, payload, {}) VALUES (%b, %b, {}) ON CONFLICT (id) "
                                    "DO UPDATE SET payload = EXCLUDED.payload, {}").format(
                    sql.Identifier(collection), sql.SQL(", ").join(columns),
                    sql.SQL(", ").join(sql.Placeholder(format=PyFormat.BINARY) * len(columns)),
                    sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in columns))
                cursor.executemany(statement, rows)

        self._call("upsert", collection, write)

    def delete(self, collection: str, ids: Iterable[PointId]) -> None:
        keys = [Decimal(schema.encode_id(i)) for i in ids]
        if keys:
            self._call("delete", collection, lambda conn: conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(collection)), [keys]))

    def query(self, collection: str, vector: np.ndarray, *, using: str = DEFAULT_VECTOR, limit: int = 10,
              payload_range: Range | Sequence[Range] | None = None) -> list[Hit]:
        where, params = schema.range_condition(payload_range)

        def search(conn):
            with conn.transaction():
                specs = catalog.pinned_specs(conn, collection)
                if using not in specs:
                    known = ", ".join(schema.vector_label(n) for n in specs) or "none"
                    raise StoreError(f"{self.name}: collection '{collection}' has no {schema.vector_label(using)} "
                                     f"(it has: {known})")
                spec = specs[using]
                column = sql.Identifier(schema.vector_column(using))
                distance = sql.SQL("{} {} %s").format(column, sql.SQL(schema.OPERATORS[spec.distance]))
                statement = sql.SQL("SELECT id, payload, {0} FROM {1} WHERE {2} IS NOT NULL AND {3} ORDER BY {0} "
                                    "LIMIT %s").format(distance, sql.Identifier(collection), column, where)
                value = schema.dump_vector(schema.as_stored(vector, spec.distance), spec)
                return spec.distance, conn.execute(statement, [value, *params, value, limit]).fetchall()

        distance, rows = self._call("query", collection, search)
        return [Hit(schema.decode_id(key), schema.score_of(distance, value), payload or {})
                for key, payload, value in rows]

    def finish_load(self, collection: str) -> None:
        """Build an HNSW index on every vector column that has none (pgvector indexes a full table
        far faster than it maintains an index row by row), then ANALYZE the table."""
        def build(conn):
            table = catalog.table_of(conn, collection)
            indexed = catalog.hnsw_columns(conn, table)
            for vector, spec in catalog.vector_specs(conn, table).items():
                column = schema.vector_column(vector)
                kind = schema.column_type(spec)
                if column in indexed:
                    continue
                if spec.size > schema.HNSW_MAX_DIMS[kind]:
                    logger.warning("%s: %s of '%s' has %d dimensions, more than HNSW indexes (%d); searches on it "
                                   "stay exact scans", self.name, schema.vector_label(vector), table, spec.size,
                                   schema.HNSW_MAX_DIMS[kind])
                    continue
                parameters = schema.hnsw_parameters(spec)
                with_clause = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.SQL(k), sql.Literal(v)) for k, v in parameters.items())) \
                    if parameters else sql.SQL("")
                conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw ({} {}){}").format(
                    sql.Identifier(table), sql.Identifier(column),
                    sql.SQL(f"{kind}_{schema.OPCLASSES[spec.distance]}"), with_clause))
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))

        self._call("build indexes", collection, build)

    def hnsw_columns(self, collection: str) -> set[str]:
        """The vectors of ``collection`` that have an HNSW index."""
        return self._call("read indexes", collection, lambda conn: {
            schema.vector_name(column) for column in catalog.hnsw_columns(conn, catalog.table_of(conn, collection))})

    # --- job state ---

    def read_state(self, key: str) -> dict[str, Any] | None:
        def read(conn):
            if catalog.relation_kind(conn, STATE_TABLE) is None:
                return None
            row = conn.execute(sql.SQL("SELECT state FROM {} WHERE key = %s").format(sql.Identifier(STATE_TABLE)),
                               [key]).fetchone()
            return row[0] if row else None

        return self._call("read state", STATE_TABLE, read)

    def write_state(self, key: str, state: dict[str, Any]) -> None:
        def write(conn):
            table = sql.Identifier(STATE_TABLE)
            if catalog.relation_kind(conn, STATE_TABLE) is None:
                try:
                    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, state jsonb NOT NULL, "
                                         "updated timestamptz NOT NULL DEFAULT now())").format(table))
                except errors.UniqueViolation:  # another process created it at the same moment
                    pass
            conn.execute(sql.SQL("INSERT INTO {} (key, state) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                                 "SET state = EXCLUDED.state, updated = now()").format(table), [key, Jsonb(state)])

        self._call("write state", STATE_TABLE, write)

    def delete_state(self, key: str) -> None:
        def delete(conn):
            if catalog.relation_kind(conn, STATE_TABLE) is not None:
                conn.execute(sql.SQL("DELETE FROM {} WHERE key = %s").format(sql.Identifier(STATE_TABLE)), [key])

        self._call("delete state", STATE_TABLE, delete)

    # --- plumbing ---

    def _connect(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout,
                                   application_name="safeclip")
            try:
                if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                    try:
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    except errors.InsufficientPrivilege:
                        raise StoreError(f"{self.name}: the pgvector extension is not installed in this database "
                                         f"and this role may not install it (an administrator can: "
                                         f"CREATE EXTENSION vector)") from None
                register_vector(conn)
                version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
                if _version(version) >= (0, 8):  # older pgvector has no iterative scans (and refuses the setting)
                    # filtered searches keep scanning the HNSW graph until they have `limit` hits, in order
                    conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', false)")
            except BaseException:
                conn.close()
                raise
            self._connection = conn
        return self._connection

    def _call(self, what: str, collection: str | None, operation: Callable[[psycopg.Connection], T]) -> T:
        """Run ``operation(connection)`` with retries; errors become one-line StoreErrors."""
        label = f"{what} '{collection}'" if collection else what

        def attempt():
            with self._lock:
                conn = self._connect()
                try:
                    return operation(conn)
                except psycopg.Error:
                    if conn.broken or conn.closed:
                        conn.close()
                        self._connection = None
                    raise

        try:
            return call_with_retries(attempt, what=label, store=self.name, policy=self._retry,
                                     classify=connection.transient_reason)
        except StoreError as error:
            raise type(error)(self._redact(str(error))) from None
        except errors.UndefinedTable:
            if collection:
                raise MissingCollectionError(f"{self.name}: collection '{collection}' not found") from None
            raise StoreError(f"{self.name}: {label} failed: a table is missing") from None
        except psycopg.Error as error:
            raise StoreError(self._redact(f"{self.name}: {label} failed: {connection.first_line(error)}")) from None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())
