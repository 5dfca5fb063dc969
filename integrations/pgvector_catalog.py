"""Catalog reads and schema changes over one psycopg connection, for :mod:`.pgvector`.

Every function takes an open connection and runs in the caller's transaction (if any). Names are
always passed as quoted identifiers, so any collection name PostgreSQL accepts is safe.
"""

from __future__ import annotations

import json

from psycopg import errors, sql

from . import pgvector_schema as schema
from .base import VectorSpec

# by name in the current schema, read under the statement's own snapshot: a view being replaced in
# another transaction is seen either before or after, never as missing (to_regclass() could give
# the new view's oid to a snapshot that does not see it yet)
RELATION = sql.SQL("SELECT c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c "
                   "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace")
COLUMNS = sql.SQL("SELECT a.attname, t.typname, a.atttypmod, col_description(a.attrelid, a.attnum) "
                  "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass(%s) "
                  "AND a.attnum > 0 AND NOT a.attisdropped AND t.typname IN ('vector', 'halfvec') ORDER BY a.attnum")
IN_SCHEMA = ("FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = %s "
             "AND obj_description(c.oid, 'pg_class') LIKE %s")
HNSW_COLUMNS = sql.SQL("SELECT a.attname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
                       "JOIN pg_am am ON am.oid = ic.relam JOIN pg_attribute a ON a.attrelid = i.indrelid "
                       "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND am.amname = 'hnsw'")


def regclass_text(conn, name: str) -> str:
    return sql.Identifier(name).as_string(conn)


def relation_kind(conn, name: str) -> str | None:
    """``collection``, ``alias``, ``table``/``view`` (not safeclip's) or None for ``name``."""
    row = conn.execute(RELATION, [name]).fetchone()
    if row is None:
        return None
    relkind, comment = row
    if relkind == "r":
        return "collection" if (comment or "").startswith(schema.TABLE_MARKER) else "table"
    if relkind == "v":
        return "alias" if (comment or "").startswith(schema.ALIAS_MARKER) else "view"
    return "relation"


def collections(conn) -> list[str]:
    """safeclip's collections in the current schema, by name."""
    return [row[0] for row in conn.execute("SELECT c.relname " + IN_SCHEMA + " ORDER BY 1",
                                           ["r", schema.TABLE_MARKER + "%"])]


def aliases(conn) -> dict[str, str]:
    """safeclip's aliases in the current schema: view name -> table name."""
    rows = conn.execute("SELECT c.relname, obj_description(c.oid, 'pg_class') " + IN_SCHEMA,
                        ["v", schema.ALIAS_MARKER + "%"]).fetchall()
    return {name: json.loads(comment)["safeclip_alias"] for name, comment in rows}


def alias_target(conn, alias: str) -> str | None:
    row = conn.execute(RELATION, [alias]).fetchone()
    if row is None or row[0] != "v" or not (row[1] or "").startswith(schema.ALIAS_MARKER):
        return None
    return json.loads(row[1])["safeclip_alias"]


def table_of(conn, name: str) -> str:
    """The table behind a collection or alias name."""
    kind = relation_kind(conn, name)
    if kind == "collection":
        return name
    if kind == "alias":
        return alias_target(conn, name)
    raise errors.UndefinedTable(f"relation '{name}' is not a safeclip collection")


def vector_specs(conn, table: str) -> dict[str, VectorSpec]:
    specs = {}
    for column, type_name, size, comment in conn.execute(COLUMNS, [regclass_text(conn, table)]):
        vector = schema.vector_name(column)
        if vector is not None:
            specs[vector] = schema.spec_from_column(type_name, size, comment)
    return specs


def payload_indexes(conn, table: str) -> dict[str, str]:
    row = conn.execute(RELATION, [table]).fetchone()
    return schema.parse_comment(row[1]).get("payload_indexes", {})


def set_payload_indexes(conn, table: str, indexes: dict[str, str]) -> None:
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        sql.Identifier(table), sql.Literal(schema.table_comment(indexes))))


def create_payload_index(conn, table: str, field_name: str, kind: str) -> None:
    expression = schema.text_at(field_name) if kind == "keyword" else schema.number_at(field_name)
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(sql.Identifier(table), expression))


def hnsw_columns(conn, table: str) -> set[str]:
    """The columns of ``table`` that have an HNSW index."""
    return {row[0] for row in conn.execute(HNSW_COLUMNS, [regclass_text(conn, table)])}


def pinned_specs(conn, name: str) -> dict[str, VectorSpec]:
    """The vectors behind ``name``, locked until the caller's transaction ends.

    ``LOCK`` on a view also locks its table, and ``switch_alias`` must wait for that lock to drop
    the view, so the layout read here stays the one the caller's next statement reads or writes,
    even when the alias moves between tables with different vectors (a side-by-side switch).
    """
    table_of(conn, name)  # a clear "not found" before LOCK's own error
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(name)))
    return vector_specs(conn, table_of(conn, name))
