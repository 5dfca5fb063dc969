"""``safeclip search``: the top k points of a collection for a text or image query, searched safely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import click

from safeclip_sdk.integrations import PG_DSN_ENV as DSN_ENV
from safeclip_sdk.search import MODES, THRESHOLD, search

DSN_FROM_ENV = "from-environment"


@click.command("search")
@click.option("--qdrant", default=None, metavar="TARGET",
              help="A local folder (embedded Qdrant), or a server URL such as https://host:6333 "
                   "(API key from QDRANT_API_KEY).")
@click.option("--pgvector", default=None, is_flag=False, flag_value=DSN_FROM_ENV, metavar="DSN",
              help="Instead of --qdrant: PostgreSQL with pgvector, postgresql://user@host:5432/db. No password "
                   f"here: it comes from PGPASSWORD or ~/.pgpass; or give --pgvector alone to use {DSN_ENV}.")
@click.option("--collection", required=True, help="The collection or alias to search.")
@click.option("--model", default=None,
              help="The safe model: a model folder or an ONNX export. Default: the model the collection "
                   "was reindexed with.")
@click.option("--text", default=None, help="A text query.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An image file as the query.")
@click.option("-k", "--limit", type=click.IntRange(min=1), default=10, show_default=True, help="How many results.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="query-side: the safe model embeds the query only, against the original vectors; safe: "
                   "against the safe vectors. Default: what the collection was built for.")
@click.option("--vector", default=None, help="The vector to search, when the collection has several.")
@click.option("--max-score", default=None, metavar="X",
              help=f"Keep only points whose moderation score is below X ('{THRESHOLD}': the recorded one).")
@click.option("--field", "fields", multiple=True, metavar="NAME",
              help="Payload fields to show in the table (repeatable). Default: the first few.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds a server request may take.")
@click.option("--no-traversal", is_flag=True,
              help="HySAC models: search with the query as it is, without moving it back to the safe region "
                   "(to review unsafe results).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def command(qdrant: str | None, pgvector: str | None, collection: str, model: str | None, text: str | None,
            image: Path | None, limit: int, mode: str | None, vector: str | None, max_score: str | None,
            fields: tuple[str, ...], timeout: float, no_traversal: bool, as_json: bool) -> None:
    """Search COLLECTION with a text (--text) or an image (--image) embedded by the safe model."""
    target = store_target(qdrant, pgvector)
    if (text is None) == (image is None):
        raise click.UsageError("give exactly one query: --text or --image")
    if max_score not in (None, THRESHOLD):
        try:
            max_score = float(max_score)
        except ValueError:
            raise click.BadParameter(f"expected a number or '{THRESHOLD}'", param_hint="--max-score") from None
    results = search(target, collection, text if text is not None else image, model=model, limit=limit, mode=mode,
                     vector=vector, max_score=max_score, timeout=timeout, traversal=not no_traversal)
    if as_json:
        click.echo(json.dumps({"collection": results.collection, "mode": results.mode, "vector": results.vector,
                               "results": [r.to_dict() for r in results]}, indent=2, default=str))
        return
    click.echo(f"{len(results)} result{'s' if len(results) != 1 else ''} from '{results.collection}' "
               f"(mode {results.mode}, vector '{results.vector}')")
    if results:
        click.echo(format_table(results, fields))


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


def format_table(results, fields: tuple[str, ...] = (), max_fields: int = 3, width: int = 40) -> str:
    """Rank, id, score and a few payload fields as aligned columns."""
    if not fields:
        seen: list[str] = []
        for result in results:
            seen += [key for key in result.payload if key not in seen]
        fields = tuple(seen[:max_fields])
    header = ["#", "id", "score", *fields]
    rows = [[str(rank), str(r.id), f"{r.score:.4f}", *(_cell(r.payload, f, width) for f in fields)]
            for rank, r in enumerate(results, 1)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def _cell(payload: dict, field: str, width: int) -> str:
    value = payload.get(field, "")
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."
