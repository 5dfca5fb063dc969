"""``safeclip audit``: how safe a live collection is, searched in each mode, from a probe file."""

from __future__ import annotations

from pathlib import Path

import click

from safeclip_sdk.cli.stores import pgvector_option, qdrant_option, store_target
from safeclip_sdk.index.audit import DEFAULT_K, audit
from safeclip_sdk.index.contract import AUDIT_MODES
from safeclip_sdk.index.search import THRESHOLD


@click.command("audit")
@qdrant_option()
@pgvector_option()
@click.option("--collection", "--table", "collection", required=True, metavar="NAME",
              help="The collection or alias readers search (in PostgreSQL, a view or table).")
@click.option("--model", required=True, metavar="MODEL", help="The safe model: a model folder or an ONNX export.")
@click.option("--probes", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The probe file (JSON Lines: a header, then labelled text or image queries).")
@click.option("--mode", "modes", type=click.Choice(AUDIT_MODES), multiple=True,
              help="A mode to measure (repeatable). Default: every mode the collection supports.")
@click.option("-k", "k", type=click.IntRange(min=1), default=DEFAULT_K, show_default=True,
              help="Results per probe (the unsafe share of the top k, R@k).")
@click.option("--base-model", metavar="MODEL",
              help="The model the original vectors were embedded with, for mode base [default: the base named "
                   "in MODEL's safeclip.json].")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path),
              help="The folder image probes are relative to (and must stay inside).")
@click.option("--max-score", default=None, metavar="X",
              help=f"The score filter's threshold [default: '{THRESHOLD}', the one recorded with the collection].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the per-category bars (base vs each mode) as a PNG.")
@click.option("--timeout", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds a server request may take.")
def command(qdrant, pgvector, collection, model, probes, modes, k, base_model, image_root, max_score, json_path,
            markdown_path, plot_path, timeout) -> None:
    """Search COLLECTION with every probe of the probe file in each mode and report how often unsafe
    items come first (per category, with confidence intervals)."""
    target = store_target(qdrant, pgvector)
    if max_score not in (None, THRESHOLD):
        try:
            max_score = float(max_score)
        except ValueError:
            raise click.BadParameter(f"expected a number or '{THRESHOLD}'", param_hint="--max-score") from None
    report = audit(target, collection, model, probes, modes=list(modes) or None, k=k, base_model=base_model,
                   image_root=image_root, max_score=max_score, json_path=json_path, markdown_path=markdown_path,
                   plot_path=plot_path, timeout=timeout)
    click.echo(report.to_markdown().rstrip())
