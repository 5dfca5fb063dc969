"""Connection strings, the names stores go by, and which psycopg errors are worth retrying."""

from __future__ import annotations

import os

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from .base import StoreError
from .retry import builtin_transient_reason


def transient_reason(error: BaseException) -> str | None:
    """Why a psycopg error is worth retrying, or None (wrong password, bad SQL, bad data...)."""
    if isinstance(error, errors.SerializationFailure):
        return "serialization failure"
    if isinstance(error, errors.DeadlockDetected):
        return "deadlock detected"
    if isinstance(error, (errors.AdminShutdown, errors.CrashShutdown, errors.CannotConnectNow)):
        return f"server shutting down: {first_line(error)}"
    if isinstance(error, errors.QueryCanceled):
        return "timed out"
    if isinstance(error, psycopg.OperationalError):
        message = first_line(error)
        if (error.sqlstate or "").startswith(("28", "3D")) or "password" in message or "does not exist" in message:
            return None  # authentication or a missing database: trying again will not help
        return f"connection failed: {message}"
    return builtin_transient_reason(error)


def parse_dsn(dsn: str) -> dict[str, str]:
    """libpq's settings from a connection string; a one-line error (never quoting it) if malformed."""
    expected = "expected postgresql://user@host:5432/db"
    try:
        settings = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise StoreError(f"the PostgreSQL connection string cannot be parsed ({expected})") from None
    port = str(settings.get("port") or "")
    if port and not all(part.isdigit() for part in port.split(",")):
        raise StoreError(f"the PostgreSQL connection string has port '{port}', not a number ({expected})")
    return settings


def describe(settings: dict[str, str]) -> str:
    """``postgresql host:port/db``: how a store is named in messages (never with a password)."""
    host = settings.get("host") or os.environ.get("PGHOST") or "localhost"
    port = settings.get("port") or os.environ.get("PGPORT") or "5432"
    database = settings.get("dbname") or os.environ.get("PGDATABASE") or settings.get("user") or "postgres"
    return f"postgresql {host}:{port}/{database}"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
