"""``safeclip demo``: a thin wrapper over :func:`safeclip_sdk.demo.run_demo`."""

from __future__ import annotations

import click


@click.command(context_settings={"show_default": True})
@click.option("-o", "--output-dir", default="demo-output", type=click.Path(file_okay=False),
              help="Where the world, models, reports and exports go (reused when re-run).")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run on a tiny world (numbers mean nothing).")
@click.option("--device", default="auto", help="auto, cpu, cuda ...")
@click.option("--seed", default=0, type=int)
@click.option("--export/--no-export", default=True, help="Export the fine-tuned model to ONNX and search with it.")
@click.option("--all-methods", is_flag=True,
              help="Also train every other method the same way and compare all the models (a few more minutes).")
def command(output_dir, quick, device, seed, export, all_methods):
    """Build a synthetic world, train a base CLIP, make it safe, evaluate, export and search."""
    from safeclip_sdk.demo.run import run_demo

    run_demo(output_dir, quick=quick, device=device, seed=seed, export=export, all_methods=all_methods,
             echo=click.echo)
