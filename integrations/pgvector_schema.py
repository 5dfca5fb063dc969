"""How a safeclip collection is laid out in PostgreSQL with pgvector.

A collection is a table::

    id        numeric(39, 0) PRIMARY KEY   -- the point id, see below
    payload   jsonb NOT NULL
    embedding vector(n) | halfvec(n)       -- the unnamed vector ""
    embedding_<name> vector(n) | ...       -- one column per named vector

Point ids are non-negative integers below 2**64 (Qdrant's range) or UUIDs. Both live in one
numeric key: an integer is itself, a UUID is ``2**64 + uuid.int``. Ordering by that key is
ascending integers, then UUIDs in the order of their canonical strings, which is the order
``scroll`` promises, and the integer ids a user sees in SQL are the plain numbers.

A vector is ``vector(n)`` unless its options ask for ``{"datatype": "float16"}`` or ``n`` is above
2000 (the largest ``vector`` an HNSW index takes); then it is ``halfvec(n)`` (HNSW up to 4000).
Each vector column's comment holds its distance and options as JSON; the table's comment marks it
as a safeclip collection and lists its payload indexes. An alias is a view ``SELECT * FROM
<table>`` whose comment names the table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql
from psycopg.types.json import Jsonb

from .base import DEFAULT_VECTOR, Point, PointId, Range, StoreError, VectorSpec

UUID_OFFSET = 2 ** 64
VECTOR_PREFIX = "embedding"
TABLE_MARKER = '{"safeclip_collection"'
ALIAS_MARKER = '{"safeclip_alias"'
#: the largest dimension HNSW indexes for ``vector`` and ``halfvec`` columns
HNSW_MAX_DIMS = {"vector": 2000, "halfvec": 4000}
OPCLASSES = {"cosine": "cosine_ops", "dot": "ip_ops", "euclid": "l2_ops"}
# pgvector distance operators; each returns a distance (smaller is closer)
OPERATORS = {"cosine": "<=>", "dot": "<#>", "euclid": "<->"}
VECTOR_OPTIONS = ("datatype", "hnsw_config")
PAYLOAD_INDEX_KINDS = ("float", "integer", "keyword")
MAX_IDENTIFIER = 63


def encode_id(point_id: PointId) -> int:
    """The numeric key of a point id (an integer in ``[0, 2**64)`` or a UUID string)."""
    if isinstance(point_id, bool):
        raise StoreError(f"point id {point_id!r} is neither a non-negative integer nor a UUID")
    if isinstance(point_id, int):
        if 0 <= point_id < UUID_OFFSET:
            return point_id
    elif isinstance(point_id, (str, uuid.UUID)):
        try:
            return UUID_OFFSET + uuid.UUID(str(point_id)).int
        except ValueError:
            pass
    raise StoreError(f"point id {point_id!r} is neither a non-negative integer below 2**64 nor a UUID")


def decode_id(key) -> PointId:
    key = int(key)
    return key if key < UUID_OFFSET else str(uuid.UUID(int=key - UUID_OFFSET))


def vector_column(name: str) -> str:
    column = VECTOR_PREFIX if name == DEFAULT_VECTOR else f"{VECTOR_PREFIX}_{name}"
    if len(column.encode()) > MAX_IDENTIFIER:
        raise StoreError(f"vector name '{name}' is too long for a PostgreSQL column "
                         f"(at most {MAX_IDENTIFIER - len(VECTOR_PREFIX) - 1} bytes)")
    return column


def vector_name(column: str) -> str | None:
    """The vector a column holds, or None for a column that is not a vector."""
    if column == VECTOR_PREFIX:
        return DEFAULT_VECTOR
    if column.startswith(VECTOR_PREFIX + "_"):
        return column[len(VECTOR_PREFIX) + 1:]
    return None


def check_name(name: str, what: str = "collection") -> str:
    if not name or len(name.encode()) > MAX_IDENTIFIER or "\x00" in name:
        raise StoreError(f"{what} name {name!r} must be 1 to {MAX_IDENTIFIER} bytes (a PostgreSQL identifier)")
    return name


def column_type(spec: VectorSpec) -> str:
    """``vector`` or ``halfvec`` for ``spec`` (its options checked)."""
    unknown = set(spec.options) - set(VECTOR_OPTIONS)
    if unknown:
        raise StoreError(f"vector options {sorted(unknown)} have no meaning in PostgreSQL "
                         f"(known: {', '.join(VECTOR_OPTIONS)})")
    if spec.distance not in OPERATORS:
        raise StoreError(f"distance '{spec.distance}' is not one of {', '.join(OPERATORS)}")
    datatype = spec.options.get("datatype")
    if datatype not in (None, "float32", "float16"):
        raise StoreError(f"vector datatype '{datatype}' is not supported (float32 or float16)")
    if datatype == "float16" or (datatype is None and spec.size > HNSW_MAX_DIMS["vector"]):
        return "halfvec"
    return "vector"


def column_comment(spec: VectorSpec, kind: str) -> str:
    options = dict(spec.options)
    if kind == "halfvec":
        options["datatype"] = "float16"
    return json.dumps({"distance": spec.distance, "options": options})


def spec_from_column(type_name: str, size: int, comment: str | None) -> VectorSpec:
    described = json.loads(comment) if comment else {}
    options = described.get("options", {})
    if type_name == "halfvec":
        options.setdefault("datatype", "float16")
    return VectorSpec(size, described.get("distance", "euclid"), options)


def hnsw_parameters(spec: VectorSpec) -> dict[str, int]:
    """pgvector's ``WITH (m, ef_construction)`` from Qdrant-style ``hnsw_config`` options."""
    config = spec.options.get("hnsw_config") or {}
    parameters = {}
    if "m" in config:
        parameters["m"] = int(config["m"])
    if "ef_construct" in config:
        parameters["ef_construction"] = int(config["ef_construct"])
    return parameters


def as_stored(values, distance: str) -> np.ndarray:
    """The float32 vector as stored: cosine vectors are normalised, as Qdrant does."""
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    if distance == "cosine":
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
    return vector


def to_array(value) -> np.ndarray:
    return np.asarray(value.to_numpy(), dtype=np.float32)


def number_at(path: str) -> sql.Composable:
    """A payload field (dotted path) as a float8, NULL when it is not a JSON number.

    The same expression backs payload indexes, so range filters can use them.
    """
    keys = sql.Literal(path.split("."))
    return sql.SQL("(CASE WHEN jsonb_typeof(payload #> {keys}) = 'number' "
                   "THEN (payload #> {keys})::float8 END)").format(keys=keys)


def text_at(path: str) -> sql.Composable:
    return sql.SQL("(payload #>> {keys})").format(keys=sql.Literal(path.split(".")))


def range_condition(payload_range: Range | list[Range] | tuple[Range, ...] | None) -> tuple[sql.Composable, list]:
    """A WHERE clause (``TRUE`` when there is no range) and its parameters."""
    ranges = [] if payload_range is None else [payload_range] if isinstance(payload_range, Range) else payload_range
    parts, params = [sql.SQL("TRUE")], []
    for item in ranges:
        if item.gte is not None:
            parts.append(sql.SQL("{} >= %s").format(number_at(item.field)))
            params.append(float(item.gte))
        if item.lt is not None:
            parts.append(sql.SQL("{} < %s").format(number_at(item.field)))
            params.append(float(item.lt))
    return sql.SQL(" AND ").join(parts), params


def row_to_point(row: tuple, vector_names: list[str]) -> Point:
    """``(id, payload, *vectors)`` as a Point; NULL vectors are absent."""
    vectors = {name: to_array(value) for name, value in zip(vector_names, row[2:]) if value is not None}
    return Point(decode_id(row[0]), row[1] if row[1] is not None else {}, vectors)


def table_comment(payload_indexes: dict[str, str]) -> str:
    return json.dumps({"safeclip_collection": 1, "payload_indexes": payload_indexes})


def parse_comment(comment: str | None) -> dict[str, Any]:
    return json.loads(comment) if comment else {}


def selected_vectors(specs: dict[str, VectorSpec], with_vectors: bool | Sequence[str]) -> list[str]:
    if with_vectors is True:
        return list(specs)
    if with_vectors is False:
        return []
    return [name for name in with_vectors if name in specs]


def vector_list(names: list[str]) -> sql.Composable:
    if not names:
        return sql.SQL("NULL")
    return sql.SQL(", ").join(sql.Identifier(vector_column(n)) for n in names)


def dump_vector(vector: np.ndarray, spec: VectorSpec):
    return HalfVector(vector) if column_type(spec) == "halfvec" else vector


def point_row(point: Point, specs: dict[str, VectorSpec], store: str, collection: str) -> list:
    unknown = set(point.vectors) - set(specs)
    if unknown:
        raise StoreError(f"{store}: upsert '{collection}' failed: point {point.id!r} has "
                         f"{', '.join(vector_label(n) for n in sorted(unknown))}, which the collection does not")
    vectors = [dump_vector(as_stored(point.vectors[name], spec.distance), spec) if name in point.vectors else None
               for name, spec in specs.items()]
    return [Decimal(encode_id(point.id)), Jsonb(point.payload or {}), *vectors]


def score_of(distance: str, value: float) -> float:
    """pgvector's distance as a score where larger is closer (cosine similarity, dot product,
    negated Euclidean distance), as the Qdrant adapter returns them."""
    if distance == "cosine":
        return 1.0 - float(value)
    return -float(value)




def vector_label(name: str) -> str:
    return f"vector '{name}'" if name else "unnamed vector"
