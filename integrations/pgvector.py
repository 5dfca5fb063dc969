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

from . import PG_DSN_ENV as DSN_ENV
from . import pgvector_schema as schema
from .base import (DEFAULT_VECTOR, Hit, MissingCollectionError, Point, PointId, Range, StoreError, VectorSpec,
                   VectorStore)
from .retry import RetryPolicy, builtin_transient_reason, call_with_retries

try:
    import psycopg
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from psycopg import errors, sql
    from psycopg.adapt import PyFormat
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import Jsonb
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the PostgreSQL integration needs psycopg and pgvector: "
                      "pip install 'safeclip[pgvector]'") from error

T = TypeVar("T")
logger = logging.getLogger(__name__)

STATE_TABLE = "safeclip_state"
SCHEMES = ("postgresql://", "postgres://")

_RELATION = sql.SQL("SELECT c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c "
                    "WHERE c.oid = to_regclass(%s)")
_COLUMNS = sql.SQL("SELECT a.attname, t.typname, a.atttypmod, col_description(a.attrelid, a.attnum) "
                   "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass(%s) "
                   "AND a.attnum > 0 AND NOT a.attisdropped AND t.typname IN ('vector', 'halfvec') ORDER BY a.attnum")
_IN_SCHEMA = ("FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = %s "
              "AND obj_description(c.oid, 'pg_class') LIKE %s")
_HNSW_COLUMNS = sql.SQL("SELECT a.attname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                        "JOIN pg_am am ON am.oid = ic.relam JOIN pg_attribute a ON a.attrelid = i.indrelid "
                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND am.amname = 'hnsw'")


class PgVectorStore(VectorStore):
    """A PostgreSQL database with the pgvector extension. Build it with :meth:`open`."""

    def __init__(self, dsn: str, *, timeout: float = 10.0, retry: RetryPolicy | None = None):
        settings = _parse_dsn(dsn)
        self.name = _describe(settings)
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
        dsn = dsn or os.environ.get(DSN_ENV)
        if not dsn:
            raise StoreError(f"no PostgreSQL connection string: give postgresql://user@host:5432/db or set {DSN_ENV}")
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
        return self._call("check collection", name, lambda conn: _kind(conn, name) == "collection")

    def list_collections(self) -> list[str]:
        return self._call("list collections", None, lambda conn: [row[0] for row in conn.execute(
            "SELECT c.relname " + _IN_SCHEMA + " ORDER BY 1", ["r", schema.TABLE_MARKER + "%"])])

    def vector_specs(self, collection: str) -> dict[str, VectorSpec]:
        return self._call("read collection", collection, lambda conn: _specs(conn, _table(conn, collection)))

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
            if not first_try and _kind(conn, name) == "collection":  # a lost reply after it was made
                return
            first_try = False
            indexes = _payload_indexes(conn, _table(conn, like)) if like else {}
            with conn.transaction():
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(columns)))
                for comment in comments:
                    conn.execute(comment)
                _set_payload_indexes(conn, name, indexes)
                for field_name, kind in indexes.items():
                    _create_payload_index(conn, name, field_name, kind)

        self._call("create collection", name, create)

    def create_payload_index(self, collection: str, field_name: str, kind: str = "float") -> None:
        """Index a payload field (``float``/``integer``: numeric range filters; ``keyword``: text)."""
        if kind not in schema.PAYLOAD_INDEX_KINDS:
            raise StoreError(f"unknown payload index kind '{kind}' (choose from {', '.join(schema.PAYLOAD_INDEX_KINDS)})")

        def create(conn):
            table = _table(conn, collection)
            indexes = _payload_indexes(conn, table)
            if indexes.get(field_name) == kind:
                return
            with conn.transaction():
                _create_payload_index(conn, table, field_name, kind)
                _set_payload_indexes(conn, table, {**indexes, field_name: kind})

        self._call("create payload index", collection, create)

    def drop_collection(self, name: str) -> None:
        def drop(conn):
            kind = _kind(conn, name)
            if kind == "alias":
                raise StoreError(f"{self.name}: '{name}' is an alias of '{_alias_target(conn, name)}', not a "
                                 f"collection; drop the collection itself")
            if kind != "collection":
                return
            with conn.transaction():
                for alias in [a for a, target in _aliases(conn).items() if target == name]:
                    conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(alias)))
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))

        self._call("drop collection", name, drop)

    def alias_target(self, alias: str) -> str | None:
        return self._call("read aliases", None, lambda conn: _alias_target(conn, alias))

    def switch_alias(self, alias: str, collection: str) -> None:
        """Repoint the view ``alias`` in one transaction: readers see the old table or the new one."""
        schema.check_name(alias, "alias")

        def switch(conn):
            with conn.transaction():
                if _kind(conn, collection) != "collection":
                    raise MissingCollectionError(f"{self.name}: cannot point alias '{alias}' at '{collection}': "
                                                 f"no such collection")
                kind = _kind(conn, alias)
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
            if _kind(conn, alias) == "alias":
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
            names = _selected(_specs(conn, _table(conn, collection)), with_vectors)
            query = sql.SQL("SELECT id, {}, {} FROM {} WHERE id >= %s ORDER BY id LIMIT %s").format(
                sql.SQL("payload" if with_payload else "NULL"), _vector_list(names), sql.Identifier(collection))
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
            names = _selected(_specs(conn, _table(conn, collection)), with_vectors)
            query = sql.SQL("SELECT id, payload, {} FROM {} WHERE id = ANY(%s)").format(
                _vector_list(names), sql.Identifier(collection))
            return names, conn.execute(query, [keys], binary=True).fetchall()

        names, rows = self._call("retrieve", collection, read)
        return [schema.row_to_point(row, names) for row in rows]

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Write whole points in one transaction: the payload and EVERY vector column are replaced
        (a vector the point lacks becomes NULL), as a Qdrant upsert does."""
        if not points:
            return

        def write(conn):
            specs = _specs(conn, _table(conn, collection))
            rows = [_row(point, specs, self.name, collection) for point in points]
            columns = [sql.Identifier(schema.vector_column(n)) for n in specs]
            statement = sql.SQL("INSERT INTO {} (id, payload, {}) VALUES (%b, %b, {}) ON CONFLICT (id) DO UPDATE "
                                "SET payload = EXCLUDED.payload, {}").format(
                sql.Identifier(collection), sql.SQL(", ").join(columns),
                sql.SQL(", ").join(sql.Placeholder(format=PyFormat.BINARY) * len(columns)),
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in columns))
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(statement, rows)

        self._call("upsert", collection, write)

    def delete(self, collection: str, ids: Iterable[PointId]) -> None:
        keys = [Decimal(schema.encode_id(i)) for i in ids]
        if keys:
            self._call("delete", collection, lambda conn: conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(collection)), [keys]))

    def query(self, collection: str, vector: np.ndarray, *, using: str = DEFAULT_VECTOR, limit: int = 10,
              payload_range: Range | Sequence[Range] | None = None) -> list[Hit]:
        def search(conn):
            specs = _specs(conn, _table(conn, collection))
            if using not in specs:
                known = ", ".join(_vector_label(n) for n in specs) or "none"
                raise StoreError(f"{self.name}: collection '{collection}' has no {_vector_label(using)} "
                                 f"(it has: {known})")
            spec = specs[using]
            column = sql.Identifier(schema.vector_column(using))
            where, params = schema.range_condition(payload_range)
            distance = sql.SQL("{} {} %s").format(column, sql.SQL(schema.OPERATORS[spec.distance]))
            statement = sql.SQL("SELECT id, payload, {0} FROM {1} WHERE {2} IS NOT NULL AND {3} "
                                "ORDER BY {0} LIMIT %s").format(distance, sql.Identifier(collection), column, where)
            value = _dump(schema.as_stored(vector, spec.distance), spec)
            return spec.distance, conn.execute(statement, [value, *params, value, limit]).fetchall()

        distance, rows = self._call("query", collection, search)
        return [Hit(schema.decode_id(key), _score(distance, value), payload or {}) for key, payload, value in rows]

    def finish_load(self, collection: str) -> None:
        """Build an HNSW index on every vector column that has none (pgvector indexes a full table
        far faster than it maintains an index row by row), then ANALYZE the table."""
        def build(conn):
            table = _table(conn, collection)
            indexed = {row[0] for row in conn.execute(_HNSW_COLUMNS, [_regclass_text(conn, table)])}
            for vector, spec in _specs(conn, table).items():
                column = schema.vector_column(vector)
                kind = schema.column_type(spec)
                if column in indexed:
                    continue
                if spec.size > schema.HNSW_MAX_DIMS[kind]:
                    logger.warning("%s: %s of '%s' has %d dimensions, more than HNSW indexes (%d); searches on it "
                                   "stay exact scans", self.name, _vector_label(vector), table, spec.size,
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
        def read(conn):
            table = _table(conn, collection)
            return {schema.vector_name(row[0]) for row in conn.execute(_HNSW_COLUMNS, [_regclass_text(conn, table)])}

        return self._call("read indexes", collection, read)

    # --- job state ---

    def read_state(self, key: str) -> dict[str, Any] | None:
        def read(conn):
            if _kind(conn, STATE_TABLE) is None:
                return None
            row = conn.execute(sql.SQL("SELECT state FROM {} WHERE key = %s").format(sql.Identifier(STATE_TABLE)),
                               [key]).fetchone()
            return row[0] if row else None

        return self._call("read state", STATE_TABLE, read)

    def write_state(self, key: str, state: dict[str, Any]) -> None:
        def write(conn):
            table = sql.Identifier(STATE_TABLE)
            if _kind(conn, STATE_TABLE) is None:
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
            if _kind(conn, STATE_TABLE) is not None:
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
                                     classify=transient_reason)
        except StoreError as error:
            raise type(error)(self._redact(str(error))) from None
        except errors.UndefinedTable:
            if collection:
                raise MissingCollectionError(f"{self.name}: collection '{collection}' not found") from None
            raise StoreError(f"{self.name}: {label} failed: a table is missing") from None
        except psycopg.Error as error:
            raise StoreError(self._redact(f"{self.name}: {label} failed: {_first_line(error)}")) from None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def transient_reason(error: BaseException) -> str | None:
    """Why a psycopg error is worth retrying, or None (wrong password, bad SQL, bad data...)."""
    if isinstance(error, errors.SerializationFailure):
        return "serialization failure"
    if isinstance(error, errors.DeadlockDetected):
        return "deadlock detected"
    if isinstance(error, (errors.AdminShutdown, errors.CrashShutdown, errors.CannotConnectNow)):
        return f"server shutting down: {_first_line(error)}"
    if isinstance(error, errors.QueryCanceled):
        return "timed out"
    if isinstance(error, psycopg.OperationalError):
        message = _first_line(error)
        if (error.sqlstate or "").startswith(("28", "3D")) or "password" in message or "does not exist" in message:
            return None  # authentication or a missing database: trying again will not help
        return f"connection failed: {message}"
    return builtin_transient_reason(error)


# --- helpers over one connection ---

def _regclass_text(conn, name: str) -> str:
    return sql.Identifier(name).as_string(conn)


def _kind(conn, name: str) -> str | None:
    """``collection``, ``alias``, ``table``/``view`` (not safeclip's) or None for ``name``."""
    row = conn.execute(_RELATION, [_regclass_text(conn, name)]).fetchone()
    if row is None:
        return None
    relkind, comment = row
    if relkind == "r":
        return "collection" if (comment or "").startswith(schema.TABLE_MARKER) else "table"
    if relkind == "v":
        return "alias" if (comment or "").startswith(schema.ALIAS_MARKER) else "view"
    return "relation"


def _aliases(conn) -> dict[str, str]:
    rows = conn.execute("SELECT c.relname, obj_description(c.oid, 'pg_class') " + _IN_SCHEMA,
                        ["v", schema.ALIAS_MARKER + "%"]).fetchall()
    return {name: json.loads(comment)["safeclip_alias"] for name, comment in rows}


def _alias_target(conn, alias: str) -> str | None:
    row = conn.execute(_RELATION, [_regclass_text(conn, alias)]).fetchone()
    if row is None or row[0] != "v" or not (row[1] or "").startswith(schema.ALIAS_MARKER):
        return None
    return json.loads(row[1])["safeclip_alias"]


def _table(conn, name: str) -> str:
    """The table behind a collection or alias name."""
    kind = _kind(conn, name)
    if kind == "collection":
        return name
    if kind == "alias":
        return _alias_target(conn, name)
    raise errors.UndefinedTable(f"relation '{name}' is not a safeclip collection")


def _specs(conn, table: str) -> dict[str, VectorSpec]:
    specs = {}
    for column, type_name, size, comment in conn.execute(_COLUMNS, [_regclass_text(conn, table)]):
        vector = schema.vector_name(column)
        if vector is not None:
            specs[vector] = schema.spec_from_column(type_name, size, comment)
    return specs


def _payload_indexes(conn, table: str) -> dict[str, str]:
    row = conn.execute(_RELATION, [_regclass_text(conn, table)]).fetchone()
    return schema.parse_comment(row[1]).get("payload_indexes", {})


def _set_payload_indexes(conn, table: str, indexes: dict[str, str]) -> None:
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(table), sql.Literal(schema.table_comment(indexes))))


def _create_payload_index(conn, table: str, field_name: str, kind: str) -> None:
    expression = schema.text_at(field_name) if kind == "keyword" else schema.number_at(field_name)
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(sql.Identifier(table), expression))


def _selected(specs: dict[str, VectorSpec], with_vectors: bool | Sequence[str]) -> list[str]:
    if with_vectors is True:
        return list(specs)
    if with_vectors is False:
        return []
    return [name for name in with_vectors if name in specs]


def _vector_list(names: list[str]) -> sql.Composable:
    if not names:
        return sql.SQL("NULL")
    return sql.SQL(", ").join(sql.Identifier(schema.vector_column(n)) for n in names)


def _dump(vector: np.ndarray, spec: VectorSpec):
    return HalfVector(vector) if schema.column_type(spec) == "halfvec" else vector


def _row(point: Point, specs: dict[str, VectorSpec], store: str, collection: str) -> list:
    unknown = set(point.vectors) - set(specs)
    if unknown:
        raise StoreError(f"{store}: upsert '{collection}' failed: point {point.id!r} has "
                         f"{', '.join(_vector_label(n) for n in sorted(unknown))}, which the collection does not")
    vectors = [_dump(schema.as_stored(point.vectors[name], spec.distance), spec) if name in point.vectors else None
               for name, spec in specs.items()]
    return [Decimal(schema.encode_id(point.id)), Jsonb(point.payload or {}), *vectors]


def _score(distance: str, value: float) -> float:
    """pgvector's distance as a score where larger is closer (cosine similarity, dot product,
    negated Euclidean distance), as the Qdrant adapter returns them."""
    if distance == "cosine":
        return 1.0 - float(value)
    return -float(value)


def _parse_dsn(dsn: str) -> dict[str, str]:
    expected = "expected postgresql://user@host:5432/db"
    try:
        settings = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise StoreError(f"the PostgreSQL connection string cannot be parsed ({expected})") from None
    port = str(settings.get("port") or "")
    if port and not all(part.isdigit() for part in port.split(",")):
        raise StoreError(f"the PostgreSQL connection string has port '{port}', not a number ({expected})")
    return settings


def _describe(settings: dict[str, str]) -> str:
    host = settings.get("host") or os.environ.get("PGHOST") or "localhost"
    port = settings.get("port") or os.environ.get("PGPORT") or "5432"
    database = settings.get("dbname") or os.environ.get("PGDATABASE") or settings.get("user") or "postgres"
    return f"postgresql {host}:{port}/{database}"


def _vector_label(name: str) -> str:
    return f"vector '{name}'" if name else "unnamed vector"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
