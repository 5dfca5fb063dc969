"""``safeclip embed``: embed a folder of images or a file of texts into .npy or .parquet."""

from __future__ import annotations

import click

from safeclip_sdk.cli.engine import engine_options
from safeclip_sdk.runtime.embed import embed
from safeclip_sdk.runtime.encoder import BACKENDS, PRECISIONS


@click.command("embed")
@click.argument("model")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
              help="torch takes a model folder; onnx and tensorrt take an export folder.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--kind", type=click.Choice(["image", "text"]), default=None,
              help="Default: a folder holds images, a file holds texts.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Items per saved chunk (the unit of resumption).")
@click.option("--no-resume", is_flag=True, help="Start over instead of continuing an interrupted run.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing OUTPUT made from another INPUT or model (once the new one is complete).")
@engine_options
def command(model: str, input_path: str, output: str, backend: str, precision: str, batch_size: int,
            device: str, kind: str | None, chunk_size: int, no_resume: bool, overwrite: bool, engine: str,
            workers: int, gpus_per_worker: float, cpus_per_worker: float, ray_address: str | None) -> None:
    """Embed INPUT with MODEL into OUTPUT (.npy with OUTPUT.ids.json, or .parquet).

    INPUT is a folder of images (recursive; ids are relative paths), a text file (one text per
    line; ids are line numbers) or a .jsonl file of {"id", "text"} objects. An interrupted run
    continues where it stopped when started again. Items that cannot be embedded are listed in
    OUTPUT.failures.json; when every item fails, the command exits with an error and OUTPUT is
    left as it was. An existing OUTPUT made from another INPUT or model (OUTPUT.source.json says
    which) is replaced only with --overwrite.
    """
    report = embed(model, input_path, output, kind=kind, backend=backend, precision=precision,
                   batch_size=batch_size, device=device, resume=not no_resume, chunk_size=chunk_size,
                   overwrite=overwrite, engine=engine, workers=workers, gpus_per_worker=gpus_per_worker,
                   cpus_per_worker=cpus_per_worker, ray_address=ray_address)
    click.echo(report.summary())
