"""``safeclip search``: the top k points of a collection for a text or image query, searched safely."""

from __future__ import annotations

import json
from pathlib import Path

import click

from safeclip_sdk.index.search import THRESHOLD, search
from safeclip_sdk.index.contract import SEARCH_MODES

from safeclip_sdk.cli.stores import pgvector_option, qdrant_option, store_target


@click.command("search")
@qdrant_option()
@pgvector_option()
@click.option("--collection", required=True, help="The collection or alias to search.")
@click.option("--model", default=None,
              help="The safe model: a model folder or an ONNX export. Default: the model the collection "
                   "was reindexed with.")
@click.option("--text", default=None, help="A text query.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An image file as the query.")
@click.option("-k", "--limit", type=click.IntRange(min=1), default=10, show_default=True, help="How many results.")
@click.option("--mode", type=click.Choice(SEARCH_MODES), default=None,
              help="query-side: the safe model embeds the query only, against the original vectors; safe: "
                   "against the safe vectors. Default: what the collection was built for.")
@click.option("--vector", default=None, help="The vector to search, when the collection has several.")
@click.option("--max-score", default=None, metavar="X",
              help=f"Keep only points whose moderation score is below X ('{THRESHOLD}': the recorded one).")
@click.option("--exclude-category", "exclude_categories", multiple=True, metavar="CATEGORY",
              help="Leave out items that the per-category scores stored by `safeclip reindex --category-scores` "
                   "flag in CATEGORY (repeatable).")
@click.option("--field", "fields", multiple=True, metavar="NAME",
              help="Payload fields to show in the table (repeatable). Default: the first few.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds a server request may take.")
@click.option("--no-traversal", is_flag=True,
              help="Models whose method moves queries back to the safe region (a hyperbolic model's safety "
                   "traversal): search with the query as it is (to review unsafe results).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def command(qdrant: str | None, pgvector: str | None, collection: str, model: str | None, text: str | None,
            image: Path | None, limit: int, mode: str | None, vector: str | None, max_score: str | None,
            exclude_categories: tuple[str, ...], fields: tuple[str, ...], timeout: float, no_traversal: bool,
            as_json: bool) -> None:
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
                     vector=vector, max_score=max_score, exclude_categories=exclude_categories, timeout=timeout,
                     traversal=not no_traversal)
    if as_json:
        click.echo(json.dumps({"collection": results.collection, "mode": results.mode, "vector": results.vector,
                               "results": [r.to_dict() for r in results]}, indent=2, default=str))
        return
    click.echo(f"{len(results)} result{'s' if len(results) != 1 else ''} from '{results.collection}' "
               f"(mode {results.mode}, vector '{results.vector}')")
    if results:
        click.echo(format_table(results, fields))


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
