"""The store options every command shares: ``--qdrant TARGET`` or ``--pgvector DSN``, exactly one."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import click

from safeclip_sdk.integrations import PG_DSN_ENV as DSN_ENV

DSN_FROM_ENV = "from-environment"
QDRANT_HELP = ("A local folder (embedded Qdrant), or a server URL such as https://host:6333 "
               "(API key from QDRANT_API_KEY).")
PGVECTOR_HELP = ("Instead of --qdrant: PostgreSQL with pgvector, postgresql://user@host:5432/db. No password "
                 f"here: it comes from PGPASSWORD or ~/.pgpass; or give --pgvector alone to use {DSN_ENV}.")


def qdrant_option():
    return click.option("--qdrant", default=None, metavar="TARGET", help=QDRANT_HELP)


def pgvector_option():
    return click.option("--pgvector", default=None, is_flag=False, flag_value=DSN_FROM_ENV, metavar="DSN",
                        help=PGVECTOR_HELP)


def store_target(qdrant: str | None, pgvector: str | None) -> str:
    """The store a command names with exactly one of ``--qdrant`` and ``--pgvector``.

    A PostgreSQL password on the command line would show in process lists and shell history, so
    it is refused there; ``--pgvector`` alone reads the whole connection string from SAFECLIP_PG_DSN.
    """
    if (qdrant is None) == (pgvector is None):
        raise click.UsageError("name the store with exactly one of --qdrant TARGET and --pgvector DSN")
    if qdrant is not None:
        return qdrant
    if pgvector == DSN_FROM_ENV:
        dsn = os.environ.get(DSN_ENV)
        if not dsn:
            raise click.BadParameter(f"given without a value, it reads {DSN_ENV}, which is not set",
                                     param_hint="--pgvector")
        return dsn
    if not pgvector.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("expected postgresql://user@host:5432/db", param_hint="--pgvector")
    try:
        parts = urlsplit(pgvector)
        has_password = parts.password is not None or "password" in parse_qs(parts.query)
    except ValueError:  # the store says what is wrong with it
        has_password = False
    if has_password:
        raise click.BadParameter(f"a password on the command line is refused (process lists, shell history): use "
                                 f"PGPASSWORD, ~/.pgpass, or the whole DSN in {DSN_ENV} with --pgvector alone",
                                 param_hint="--pgvector")
    return pgvector
