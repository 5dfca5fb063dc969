"""``safeclip classify``: safe or unsafe, with a score, for texts and images (HySAC models), and
``safeclip classify calibrate``: recalibrate the threshold stored in a model folder. Thin wrappers
over :func:`safeclip_sdk.runtime.classify.classify` and :func:`safeclip_sdk.runtime.classify.calibrate_model`."""

from __future__ import annotations

import json
from pathlib import Path

import click

CALIBRATE = "calibrate"
PREDICT = "predict"


class _ClassifyGroup(click.Group):
    """``safeclip classify MODEL ...`` runs ``predict``; ``safeclip classify calibrate ...`` calibrates."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [PREDICT, *args]
        return super().parse_args(ctx, args)


@click.group("classify", cls=_ClassifyGroup)
def command() -> None:
    """Classify texts and images as safe or unsafe with a HySAC model (its distance from the origin
    against the calibrated threshold):

    \b
        safeclip classify MODEL --text "..." --image photo.jpg [--json]

    or recalibrate the threshold on labelled validation data:

    \b
        safeclip classify calibrate MODEL --data val.jsonl [--plot calib.png] [--json calib.json]
    """


@command.command(PREDICT)
@click.argument("model")
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image file to classify (repeatable).")
@click.option("--threshold", type=float, default=None, help="Use this threshold instead of the calibrated one.")
@click.option("--backend", default="auto", show_default=True, help="torch, onnx, tensorrt or auto.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def predict(model: str, texts: tuple[str, ...], images: tuple[Path, ...], threshold: float | None, backend: str,
            device: str, as_json: bool) -> None:
    """Classify each --text and --image with MODEL (a HySAC model folder or ONNX export)."""
    from safeclip_sdk.runtime.classify import classify

    if not texts and not images:
        raise click.UsageError("give at least one --text or --image")
    results = classify(model, texts=texts, images=images, threshold=threshold, backend=backend, device=device)
    items = [("text", text) for text in texts] + [("image", str(image)) for image in images]
    if as_json:
        rows = [{"modality": modality, "item": item, "label": result.label, "score": result.score}
                for (modality, item), result in zip(items, results)]
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for (modality, item), result in zip(items, results):
        shown = item if len(item) <= 60 else item[:57] + "..."
        click.echo(f"{result.label:<6}  {result.score:.4f}  {modality}  {shown}")


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
