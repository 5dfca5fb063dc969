"""``safeclip eval``: a thin wrapper over :func:`safeclip_sdk.evaluation.evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

BASE_NAME = "base"


@click.command(context_settings={"show_default": True})
@click.argument("models", nargs=-1, required=True)
@click.option("--data", required=True, help="Test quadruplets: ViSU .json or generic .jsonl.")
@click.option("--image-root", help="COCO root for ViSU files, or the folder relative image paths start from.")
@click.option("--unsafe-image-root", help="Folder of unsafe images, if you have them.")
@click.option("--base", "base_source", help="Base model to compare against [default: the base named in "
                                            "the first MODEL's safeclip.json].")
@click.option("--base-pretrained", help="open_clip pretrained tag or checkpoint file for the base model.")
@click.option("--no-base", is_flag=True, help="Evaluate only the given models.")
@click.option("--zero-shot-dir", help="Folder of class subfolders for the zero-shot check "
                                      "[default: the data's labelled images].")
@click.option("--batch-size", type=int, default=64)
@click.option("--num-workers", type=int, default=0, help="DataLoader worker processes.")
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--json", "json_path", help="Write the full report (all metrics, per category) here.")
@click.option("--markdown", "markdown_path", help="Write the Markdown table here.")
@click.option("--skip-bad", is_flag=True, help="Skip bad dataset rows instead of stopping.")
def command(models, data, image_root, unsafe_image_root, base_source, base_pretrained, no_base, zero_shot_dir,
            batch_size, num_workers, device, json_path, markdown_path, skip_bad):
    """Compare MODELs (model folders or any base-model source) on the safe/unsafe retrieval
    protocol of the Safe-CLIP paper: R@1/10/20 for T->V, V->T, T*->V+V*, V*->T+T*, the unsafe
    top-1 rate and zero-shot accuracy, one row per model."""
    from safeclip_sdk.evaluation import base_model_of, evaluate

    if no_base and (base_source or base_pretrained):
        raise click.UsageError("--no-base cannot be combined with --base or --base-pretrained")
    specs = {}
    if not no_base:
        base = (base_source, base_pretrained) if base_source else base_model_of(models[0])
        if base is not None:
            specs[BASE_NAME] = (base[0], base_pretrained or base[1])
        else:
            click.echo(f"{models[0]} records no base model (safeclip.json); pass --base SOURCE to compare "
                       f"against one", err=True)
    specs.update(zip(model_names(models, taken={BASE_NAME} if specs else set()), models))

    report = evaluate(specs, data, image_root=image_root, unsafe_image_root=unsafe_image_root, skip_bad=skip_bad,
                      batch_size=batch_size, device=device, num_workers=num_workers, zero_shot_dir=zero_shot_dir)
    click.echo(report.to_markdown(), nl=False)
    report.save(json_path=json_path, markdown_path=markdown_path)
    for path in (json_path, markdown_path):
        if path:
            click.echo(f"wrote {path}", err=True)


def model_names(sources: tuple[str, ...], taken: set[str]) -> list[str]:
    """A table name per source: a folder's name, widened to ``parent/name`` (and so on) where two
    names would collide, e.g. ``run-a/model`` and ``run-b/model``; other sources as given."""
    parts = []
    for source in sources:
        folder = Path(source.removeprefix("local-dir:")).expanduser()
        parts.append(folder.resolve().parts if folder.is_dir() else (source,))
    depths = [1] * len(sources)
    while True:
        names = ["/".join(path[-depth:]) for path, depth in zip(parts, depths)]
        clashing = [i for i, name in enumerate(names) if name in taken or names.count(name) > 1]
        widenable = [i for i in clashing if depths[i] < len(parts[i])]
        if not clashing:
            return names
        if not widenable:
            raise click.UsageError(f"model '{sources[clashing[0]]}' is given twice")
        for i in widenable:
            depths[i] += 1
