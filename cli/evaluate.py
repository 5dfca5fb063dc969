"""``safeclip eval``: a thin wrapper over :func:`safeclip_sdk.evaluation.protocol.evaluate`, and with
``--deployment`` over :func:`safeclip_sdk.evaluation.deployment.compare_deployments`."""

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
@click.option("--deployment", is_flag=True, help="Compare deployments of one safe MODEL over a collection embedded "
                                                 "with the base: base, query-side, full reindex, side-by-side.")
@click.option("--val-data", help="With --deployment: validation quadruplets to calibrate the moderation "
                                 "thresholds on [default: the test data itself, in-sample].")
@click.option("--target-fpr", type=float, help="With --deployment: calibrate thresholds to flag at most this share "
                                               "of safe items (e.g. 0.05) [default: maximise balanced accuracy].")
@click.option("--plot", "plot_path", help="With --deployment: draw the shift score's ROC curves into this PNG.")
def command(models, data, image_root, unsafe_image_root, base_source, base_pretrained, no_base, zero_shot_dir,
            batch_size, num_workers, device, json_path, markdown_path, skip_bad, deployment, val_data, target_fpr,
            plot_path):
    """Compare MODELs (model folders or any base-model source) on the safe/unsafe retrieval
    protocol of the Safe-CLIP paper: R@1/10/20 for T->V, V->T, T*->V+V*, V*->T+T*, the unsafe
    top-1 rate, the safe-query leak and zero-shot accuracy, one row per model, each in its own
    embedding space. A HySAC model gets two rows, with its safety traversal and without
    ("NAME (no traversal)"), and a second table of its safe/unsafe classification (accuracy,
    FPR, FNR, ROC AUC at its stored threshold).

    With --deployment, measure which deployment of the one safe MODEL is safer, for unsafe and
    safe queries, text and image queries, and recommend one."""
    from safeclip_sdk.evaluation.protocol import base_model_of, evaluate

    if no_base and (base_source or base_pretrained):
        raise click.UsageError("--no-base cannot be combined with --base or --base-pretrained")
    if deployment:
        return _compare_deployments(models, data, base_source=base_source, base_pretrained=base_pretrained,
                                    no_base=no_base, zero_shot_dir=zero_shot_dir, val_data=val_data,
                                    image_root=image_root, unsafe_image_root=unsafe_image_root, skip_bad=skip_bad,
                                    batch_size=batch_size, device=device, num_workers=num_workers,
                                    target_fpr=target_fpr, json_path=json_path, markdown_path=markdown_path,
                                    plot_path=plot_path)
    for name, value in (("--val-data", val_data), ("--target-fpr", target_fpr), ("--plot", plot_path)):
        if value is not None:
            raise click.UsageError(f"{name} needs --deployment")
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


def _compare_deployments(models, data, *, base_source, base_pretrained, no_base, zero_shot_dir, json_path,
                         markdown_path, plot_path, **options):
    from safeclip_sdk.evaluation.deployment import compare_deployments
    from safeclip_sdk.evaluation.protocol import base_model_of

    if len(models) != 1:
        raise click.UsageError(f"--deployment compares one safe MODEL with its base, got {len(models)} models")
    if no_base or zero_shot_dir:
        raise click.UsageError("--deployment cannot be combined with --no-base or --zero-shot-dir")
    base = (base_source, base_pretrained) if base_source else base_model_of(models[0])
    if base is None:
        raise click.UsageError(f"{models[0]} records no base model (safeclip.json); pass --base SOURCE")
    report = compare_deployments((base[0], base_pretrained or base[1]), models[0], data, **options)
    click.echo(report.to_markdown(), nl=False)
    report.save(json_path=json_path, markdown_path=markdown_path, plot_path=plot_path)
    for path in (json_path, markdown_path, plot_path):
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
