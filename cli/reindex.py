"""``safeclip reindex``: re-embed a live Qdrant collection or PostgreSQL table with a safe model
(blue-green), gated on a safety audit if asked, and ``safeclip reindex status`` / ``rollback`` /
``cleanup``."""

from __future__ import annotations

import json

import click

from safeclip_sdk.cli.engine import engine_options
from safeclip_sdk.cli.stores import pgvector_option, qdrant_option, store_target
from safeclip_sdk.index.reindex import DEFAULT_BATCH_SIZE, GateLimits, cleanup, reindex, rollback
from safeclip_sdk.index.reindex.status import describe, status
from safeclip_sdk.index.contract import DEFAULT_REINDEX_MODE, DEFAULT_SCORE_FIELD, REINDEX_MODES, UNSAFE_SCORE_FIELD


@click.group("reindex", invoke_without_command=True)
@qdrant_option()
@pgvector_option()
@click.option("--collection", "--table", "collection", metavar="NAME",
              help="The alias readers use (in PostgreSQL, a view).")
@click.option("--model", metavar="MODEL", help="Safe model folder or ONNX export.")
@click.option("--mode", type=click.Choice(REINDEX_MODES), default=DEFAULT_REINDEX_MODE, show_default=True)
@click.option("--image-field", metavar="F", help="Payload field with an image path (under --image-root) or URL.")
@click.option("--image-root", metavar="DIR", type=click.Path(file_okay=False), help="Folder image paths are inside.")
@click.option("--text-field", metavar="F", help="Payload field with a text.")
@click.option("--vector", "vectors", metavar="KIND=NAME", multiple=True,
              help="Which stored vector a source re-embeds: image=NAME or text=NAME (repeatable).")
@click.option("--on-error", type=click.Choice(["keep", "skip"]), default="keep", show_default=True,
              help="A point whose source cannot be read keeps its old vectors (flagged) or is left out.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the plan and an estimated time; write nothing.")
@click.option("--drop-old", is_flag=True, help="Drop the old collection once the new one is verified and live.")
@click.option("--allow-urls", is_flag=True, help="Let the image field hold http(s) URLs (size and time limited).")
@click.option("--adopt", is_flag=True, help="Turn a plain collection NAME into an alias (a moment of downtime).")
@click.option("--new-version", is_flag=True,
              help="Build a new version even if the alias already serves one made by this model with these settings.")
@click.option("--score-field", default=None,
              help=f"Payload key of the moderation score [default: {DEFAULT_SCORE_FIELD} for the side-by-side "
                   f"shift score, {UNSAFE_SCORE_FIELD} for a model that scores items itself, e.g. by the "
                   f"distance from the origin of a hyperbolic space].")
@click.option("--no-score", is_flag=True, help="Store no moderation score.")
@click.option("--category-scores", is_flag=True,
              help="Also store the model's per-category scores (its fitted category classifier) in each payload, "
                   "for safeclip search --exclude-category.")
@click.option("--report", metavar="PATH", type=click.Path(dir_okay=False),
              help="JSON report (default: reindex-NAME.json in the current folder).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--gate", metavar="PROBES", type=click.Path(dir_okay=False),
              help="A probe file: audit the old and the new collection before the switch and switch only if the "
                   "new one is no less safe (see docs/reindex.md).")
@click.option("--gate-image-root", metavar="DIR", type=click.Path(file_okay=False),
              help="The folder the probe file's image probes are relative to.")
@click.option("--base-model", metavar="MODEL",
              help="For --gate: the model the old collection's vectors were embedded with [default: the base "
                   "named in MODEL's safeclip.json].")
@click.option("--max-unsafe-top1-increase", type=click.FloatRange(min=0), metavar="POINTS",
              default=GateLimits.max_unsafe_top1_increase, show_default=True,
              help="The gate: how much higher the new unsafe top-1 may be.")
@click.option("--max-leak-increase", type=click.FloatRange(min=0), metavar="POINTS",
              default=GateLimits.max_leak_increase, show_default=True,
              help="The gate: how much higher the new safe-query leak may be.")
@click.option("--max-recall-drop", type=click.FloatRange(min=0), metavar="POINTS",
              default=GateLimits.max_recall_drop, show_default=True,
              help="The gate: how much lower the new R@1 of the safe probes may be.")
@click.option("--resume-switch", is_flag=True,
              help="Switch a reindex that a failed gate stopped (after you looked at both audits).")
@engine_options
@click.pass_context
def command(ctx: click.Context, qdrant, pgvector, collection, model, mode, image_field, image_root, text_field,
            vectors, on_error, batch_size, dry_run, drop_old, allow_urls, adopt, new_version, score_field, no_score,
            category_scores, report, no_progress, gate, gate_image_root, base_model, max_unsafe_top1_increase,
            max_leak_increase, max_recall_drop, resume_switch, engine, workers, gpus_per_worker, cpus_per_worker,
            ray_address) -> None:
    """Re-embed the collection behind alias NAME with MODEL into NAME-safeclip-vN, keep it in step
    with live writes, verify it and switch the alias; the old collection stays for rollback.

    \b
    safeclip reindex --qdrant ./db --collection photos --model runs/safe --image-field path --image-root /data
    safeclip reindex --qdrant ./db --collection photos --model runs/safe --image-field path --image-root /data \
        --gate probes.jsonl
    safeclip reindex status --qdrant ./db --collection photos
    safeclip reindex rollback --qdrant ./db --collection photos
    safeclip reindex cleanup --qdrant ./db --collection photos
    safeclip reindex --pgvector postgresql://search@db:5432/catalog --table items --model runs/safe --text-field t
    safeclip reindex --qdrant https://qdrant:6333 --collection photos --model runs/safe --image-field path \
        --image-root /shared/photos --engine ray --workers 8 --gpus-per-worker 1
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [flag for flag, value in (("--collection", collection), ("--model", model)) if not value]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    target = store_target(qdrant, pgvector)
    result = reindex(target, collection, model, mode=mode, image_field=image_field, image_root=image_root,
                     text_field=text_field, vectors=list(vectors), on_error=on_error, batch_size=batch_size,
                     dry_run=dry_run, drop_old=drop_old, allow_urls=allow_urls, adopt=adopt,
                     new_version=new_version, score_field=score_field, score=not no_score,
                     category_scores=category_scores, gate=gate,
                     gate_image_root=gate_image_root, base_model=base_model,
                     max_unsafe_top1_increase=max_unsafe_top1_increase, max_leak_increase=max_leak_increase,
                     max_recall_drop=max_recall_drop, resume_switch=resume_switch,
                     report=None if dry_run else (report or f"reindex-{collection}.json"), progress=not no_progress,
                     engine=engine, workers=workers, gpus_per_worker=gpus_per_worker,
                     cpus_per_worker=cpus_per_worker, ray_address=ray_address)
    click.echo(result.summary())


@command.command("status")
@qdrant_option()
@pgvector_option()
@click.option("--collection", "--table", "collection", metavar="NAME", required=True, help="The alias.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status, gate audits included, as JSON.")
def status_command(qdrant: str | None, pgvector: str | None, collection: str, as_json: bool) -> None:
    """Where alias NAME points and where its last reindex stands, with the safety gate's decision."""
    found = status(store_target(qdrant, pgvector), collection)
    click.echo(json.dumps(found, indent=2, default=str) if as_json else describe(found))


@command.command("rollback")
@qdrant_option()
@pgvector_option()
@click.option("--collection", "--table", "collection", metavar="NAME", required=True,
              help="The alias to switch back.")
def rollback_command(qdrant: str | None, pgvector: str | None, collection: str) -> None:
    """Point alias NAME back at the collection it pointed at before the last switch."""
    previous = rollback(store_target(qdrant, pgvector), collection)
    click.echo(f"'{collection}' now points at {previous}")


@command.command("cleanup")
@qdrant_option()
@pgvector_option()
@click.option("--collection", "--table", "collection", metavar="NAME", required=True,
              help="The alias whose old versions to drop.")
@click.option("--dry-run", is_flag=True, help="List what would be dropped.")
def cleanup_command(qdrant: str | None, pgvector: str | None, collection: str, dry_run: bool) -> None:
    """Drop NAME's versions the alias does not point at (and abandon an unfinished reindex)."""
    dropped = cleanup(store_target(qdrant, pgvector), collection, dry_run=dry_run)
    verb = "would drop" if dry_run else "dropped"
    click.echo(f"{verb} {', '.join(dropped)}" if dropped else "nothing to drop")
