"""``safeclip classify``: moderation of texts and images, per category (a model with a fitted
category classifier) and by the model's own unsafe score (a model whose method classifies);
``safeclip classify fit``: fit and calibrate the per-category classifier; ``safeclip classify
calibrate``: recalibrate the method's threshold stored in a model folder. Thin wrappers over
:func:`safeclip_sdk.runtime.classify.moderate`, :func:`safeclip_sdk.runtime.category_fit.fit_classifier` and
:func:`~safeclip_sdk.runtime.classify.calibrate_model`."""

from __future__ import annotations

import json
from pathlib import Path

import click

CALIBRATE = "calibrate"
FIT = "fit"
PREDICT = "predict"


class _ClassifyGroup(click.Group):
    """``safeclip classify MODEL ...`` runs ``predict``; ``safeclip classify fit|calibrate ...`` the others."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [PREDICT, *args]
        return super().parse_args(ctx, args)


@click.group("classify", cls=_ClassifyGroup)
def command() -> None:
    """Moderate texts and images, OpenAI-shaped (flagged, categories, category_scores): per category
    with a model whose category classifier was fitted, and as the category 'unsafe' by the model's
    own unsafe score when its method classifies:

    \b
        safeclip classify MODEL --text "..." --image photo.jpg [--json]

    fit the per-category classifier on labelled data (stored in the model folder):

    \b
        safeclip classify fit MODEL --data train.jsonl --val-data val.jsonl [--target-precision 0.9]

    or recalibrate the method's threshold on labelled validation data:

    \b
        safeclip classify calibrate MODEL --data val.jsonl [--plot calib.png] [--json calib.json]
    """


@command.command(PREDICT)
@click.argument("model")
@click.option("--text", "texts", multiple=True, help="A text to moderate (repeatable).")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image file to moderate (repeatable).")
@click.option("--threshold", "thresholds", multiple=True, metavar="CATEGORY=X",
              help="Flag CATEGORY above X instead of its calibrated threshold (repeatable; 'unsafe': the "
                   "method's own score).")
@click.option("--backend", default="auto", show_default=True, help="torch, onnx, tensorrt or auto.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def predict(model: str, texts: tuple[str, ...], images: tuple[Path, ...], thresholds: tuple[str, ...], backend: str,
            device: str, as_json: bool) -> None:
    """Moderate each --text and --image with MODEL (a model folder or ONNX export)."""
    from safeclip_sdk.runtime.classify import moderate

    if not texts and not images:
        raise click.UsageError("give at least one --text or --image")
    moderations = moderate(model, texts=texts, images=images, thresholds=_parse_thresholds(thresholds),
                           backend=backend, device=device)
    if as_json:
        click.echo(json.dumps({"model": model, "results": [m.to_dict() for m in moderations]}, indent=2,
                              ensure_ascii=False))
        return
    for moderation in moderations:
        flagged = [name for name, flag in moderation.categories.items() if flag]
        top = max(moderation.category_scores, key=moderation.category_scores.get)
        shown = ", ".join(f"{name} {moderation.category_scores[name]:.4f}" for name in (flagged or [top]))
        item = moderation.input if len(moderation.input) <= 60 else moderation.input[:57] + "..."
        click.echo(f"{'flagged' if moderation.flagged else 'ok':<7}  {shown}  {moderation.modality}  {item}")


def _parse_thresholds(values: tuple[str, ...]) -> dict[str, float]:
    parsed = {}
    for value in values:
        category, sep, number = value.rpartition("=")
        try:
            threshold = float(number)
        except ValueError:
            threshold = None
        if not sep or not category.strip() or threshold is None:
            raise click.BadParameter(f"{value!r}: expected CATEGORY=NUMBER, e.g. weapons=0.5",
                                     param_hint="--threshold")
        parsed[category.strip()] = threshold
    return parsed


@command.command(FIT)
@click.argument("model")
@click.option("--data", required=True, help="Training quadruplets with a category on every row (.jsonl or ViSU .json).")
@click.option("--val-data", required=True, help="Validation quadruplets: calibration and thresholds.")
@click.option("--target-precision", type=float, default=None,
              help="Each category's threshold is the lowest whose flagged validation items reach this precision "
                   "[default: 0.9 when no target is given].")
@click.option("--target-recall", type=float, default=None,
              help="Each category's threshold flags at least this share of its validation items.")
@click.option("--image-root", help="The folder relative image paths start from (both files).")
@click.option("--skip-bad", is_flag=True, help="Skip bad dataset rows instead of stopping.")
@click.option("--plot", "plot_path", help="Write the reliability curves (before and after calibration) as a PNG.")
@click.option("--json", "json_path", help="Write the whole report as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
def fit(model: str, data: str, val_data: str, target_recall: float | None, target_precision: float | None,
        image_root: str | None, skip_bad: bool, plot_path: str | None, json_path: str | None, device: str) -> None:
    """Fit MODEL's per-category classifier on --data, calibrate it on --val-data and store it in the folder."""
    from safeclip_sdk.runtime.category_fit import fit_classifier

    report = fit_classifier(model, data, val_data, target_precision=target_precision, target_recall=target_recall,
                            image_root=image_root, skip_bad=skip_bad, plot_path=plot_path, json_path=json_path,
                            device=device)
    target = report["target"]
    click.echo(f"thresholds for a target {target['kind']} of {target['value']:g} on {report['val_data']}")
    click.echo(f"{'modality':<8}  {'category':<20}  {'AUC':>5}  {'threshold':>9}  {'precision':>9}  {'recall':>6}")
    for modality, entry in report["modalities"].items():
        for category, result in entry["categories"].items():
            mark = "" if result["reached"] else "  (target not reached)"
            click.echo(f"{modality:<8}  {category:<20}  {result['auc']:5.3f}  {result['threshold']:9.4f}  "
                       f"{100 * result['precision']:8.1f}%  {100 * result['recall']:5.1f}%{mark}")
        click.echo(f"{modality:<8}  {'(reliability)':<20}  ECE {entry['reliability']['before']['ece']:.3f} before, "
                   f"{entry['reliability']['after']['ece']:.3f} after temperature {entry['temperature']:.3g}")
    click.echo(f"stored in {Path(model.removeprefix('local-dir:')).expanduser()}", err=True)
    for path in (plot_path, json_path):
        if path:
            click.echo(f"wrote {path}", err=True)


@command.command(CALIBRATE)
@click.argument("model")
@click.option("--data", required=True, help="Labelled validation quadruplets: ViSU .json or generic .jsonl.")
@click.option("--image-root", help="COCO root for ViSU files, or the folder relative image paths start from.")
@click.option("--unsafe-image-root", help="Folder of unsafe images, if you have them.")
@click.option("--skip-bad", is_flag=True, help="Skip bad dataset rows instead of stopping.")
@click.option("--objective", type=click.Choice(["balanced_accuracy", "accuracy"]), default="balanced_accuracy",
              show_default=True, help="What the chosen threshold maximises.")
@click.option("--plot", "plot_path", help="Write the calibration curve (ROC, accuracy against threshold) as a PNG.")
@click.option("--json", "json_path", help="Write the calibration report (curves included) as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
def calibrate(model: str, data: str, image_root: str | None, unsafe_image_root: str | None, skip_bad: bool,
              objective: str, plot_path: str | None, json_path: str | None, device: str) -> None:
    """Choose MODEL's threshold on --data and store it in the model folder's safeclip.json."""
    from safeclip_sdk.runtime.classify import calibrate_model

    report = calibrate_model(model, data, image_root=image_root, unsafe_image_root=unsafe_image_root,
                             skip_bad=skip_bad, objective=objective, plot_path=plot_path, json_path=json_path,
                             device=device)
    for name, result in [("all", report["calibration"]), *report["calibration_modality"].items()]:
        at = result["at_threshold"]
        click.echo(f"{name:<5}  threshold {result['threshold']:.4f}  AUC {result['auc']:.3f}  "
                   f"accuracy {at['accuracy']:.1f}%  FPR {at['fpr']:.1f}%  FNR {at['fnr']:.1f}%")
    click.echo(f"stored in {Path(model.removeprefix('local-dir:')).expanduser() / 'safeclip.json'}", err=True)
    for path in (plot_path, json_path):
        if path:
            click.echo(f"wrote {path}", err=True)
