"""Per-category moderation scores side by side on the demo world: the per-category classifier
(`safeclip classify fit`) on the base model and on each safe model, HySAC's distance from the
origin, and the shift score of Safe-CLIP (1 - cos between the base and the safe embedding).

    python benchmarks/category_scores.py --demo demo-output --out demo-output/classify-bench

For each model folder of the demo (base, safe-clip, hysac by default) a copy is made under
OUT/models/ (the demo folder is not written) and its classifier is fitted on world/train.jsonl and
calibrated on world/val.jsonl with the default target (precision 0.9), and its thresholds are also
chosen for a second target (--compare-target, default recall 0.95). Everything below is measured
on world/test.jsonl, texts and images separately; the unsafe caption (picture) of a row belongs to
the row's category, the safe one to the safe class:

- classifier: per category, ROC AUC of the category's items against the safe items, and against
  every other item (safe or of another category: telling the categories apart); precision and
  recall of its flag at the stored threshold; and the verdict "any category flagged" overall;
- distance from the origin (models whose method has an unsafe score): ROC AUC of each category's
  items against the safe items, the share of each category flagged at the model's calibrated
  threshold, and the precision of that verdict overall (a single score cannot name a category);
- shift score: the same, its threshold chosen on world/val.jsonl for the best balanced accuracy.

Writes OUT/category-scores.md and .json, OUT/category-auc.png (ROC AUC against the safe items, per
category, every score) and each model's reliability curves (OUT/reliability-<model>.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, markdown_table, write_json  # noqa: E402

from safeclip_sdk._utils.bars_plot import draw_grouped_bars  # noqa: E402
from safeclip_sdk.data import load_dataset  # noqa: E402
from safeclip_sdk.metrics.category_calibration import category_auc, precision_recall, threshold_for_target  # noqa: E402
from safeclip_sdk.model.category_classifier import SETTINGS_FILE  # noqa: E402
from safeclip_sdk.metrics.moderation import calibrate_threshold, roc_auc, shift_score  # noqa: E402
from safeclip_sdk.runtime.category_fit import fit_classifier  # noqa: E402
from safeclip_sdk.runtime.encoder import Encoder  # noqa: E402

MODALITIES = ("text", "image")
SHIFT_PAIR = ("base", "safe-clip")
RESAMPLES = 500


def auc_interval(negatives: np.ndarray, positives: np.ndarray, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the ROC AUC, each class resampled on its own."""
    rng = np.random.default_rng(seed)
    aucs = [roc_auc(negatives[rng.integers(0, len(negatives), len(negatives))],
                    positives[rng.integers(0, len(positives), len(positives))]) for _ in range(RESAMPLES)]
    return [float(value) for value in np.quantile(aucs, [0.025, 0.975])]


def embed(encoder: Encoder, dataset) -> dict[str, dict[str, np.ndarray]]:
    """Per modality: the safe and unsafe embeddings of every row, and each row's category."""
    items = dataset.items
    categories = np.array([item.category for item in items])
    return {"text": {"safe": encoder.encode_text([item.safe_text for item in items]),
                     "unsafe": encoder.encode_text([item.unsafe_text for item in items]), "category": categories},
            "image": {"safe": encoder.encode_image([item.safe_image for item in items]),
                      "unsafe": encoder.encode_image([item.unsafe_image for item in items]), "category": categories}}


def labelled_probabilities(encoder: Encoder, split: dict, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's probabilities of every safe and unsafe item of a split, and their labels."""
    points = split[modality]
    labels = np.concatenate([["safe"] * len(points["safe"]), points["category"]])
    return encoder.category_classifier.probabilities(np.concatenate([points["safe"], points["unsafe"]]),
                                                     modality), labels


def thresholds_for(encoder: Encoder, val: dict, modality: str, kind: str, value: float) -> dict[str, float]:
    """Each category's threshold for another target, chosen on the validation split as the fit does."""
    classifier = encoder.category_classifier
    probabilities, labels = labelled_probabilities(encoder, val, modality)
    return {category: threshold_for_target(probabilities[:, classifier.classes.index(category)], labels == category,
                                           kind, value)["threshold"] for category in classifier.categories}


def classifier_figures(encoder: Encoder, split: dict, modality: str, thresholds: dict[str, float]) -> dict:
    classifier = encoder.category_classifier
    probabilities, labels = labelled_probabilities(encoder, split, modality)
    flags = {category: probabilities[:, classifier.classes.index(category)] > thresholds[category]
             for category in classifier.categories}
    flagged = np.any(list(flags.values()), axis=0)
    figures = {}
    for category in classifier.categories:
        scores = probabilities[:, classifier.classes.index(category)]
        positives = labels == category
        figures[category] = {"flagged_unsafe": float(flagged[positives].mean()),
                             "auc_vs_safe": roc_auc(scores[labels == "safe"], scores[positives]),
                             "auc_vs_safe_interval": auc_interval(scores[labels == "safe"], scores[positives]),
                             "auc_vs_rest": category_auc(scores, positives),
                             **precision_recall(scores, positives, thresholds[category])}
    unsafe = labels != "safe"
    verdict = {"precision": float(unsafe[flagged].mean()) if flagged.any() else 1.0,
               "recall": float(flagged[unsafe].mean()), "safe_flagged": float(flagged[~unsafe].mean()),
               "auc": roc_auc(1 - probabilities[~unsafe, 0], 1 - probabilities[unsafe, 0])}
    return {"categories": figures, "unsafe": verdict}


def single_score_figures(safe: np.ndarray, unsafe: np.ndarray, categories: np.ndarray, threshold: float) -> dict:
    figures = {category: {"flagged_unsafe": float(np.mean(unsafe[categories == category] > threshold)),
                          "auc_vs_safe": roc_auc(safe, unsafe[categories == category]),
                          "auc_vs_safe_interval": auc_interval(safe, unsafe[categories == category])}
               for category in sorted(set(categories))}
    flagged_safe, flagged_unsafe = int(np.sum(safe > threshold)), int(np.sum(unsafe > threshold))
    verdict = {"precision": flagged_unsafe / max(flagged_safe + flagged_unsafe, 1),
               "recall": flagged_unsafe / len(unsafe), "safe_flagged": flagged_safe / len(safe), "auc": roc_auc(safe, unsafe), "threshold": float(threshold)}
    return {"categories": figures, "unsafe": verdict}


def measure(demo: Path, out: Path, models: list[str], device: str, target: dict[str, float | None],
            compared: tuple[str, float], reuse_fitted: bool) -> dict:
    world = demo / "world"
    val, test = load_dataset(world / "val.jsonl"), load_dataset(world / "test.jsonl")
    report = {"demo": str(demo), "test_rows": len(test.items), "classifier": {}, "distance": {}, "shift": {},
              "fit": {}, "compared_target": {"kind": compared[0], "value": compared[1]}, "classifier_compared": {}}
    embedded = {}
    for name in models:
        folder = out / "models" / name
        if not folder.exists():
            shutil.copytree(demo / name / "model", folder)
        if reuse_fitted and (folder / SETTINGS_FILE).is_file():
            settings = json.loads((folder / SETTINGS_FILE).read_text())
            report["fit"][name] = {"target": settings["target"], "modalities": settings["report"]}
        else:
            report["fit"][name] = fit_classifier(folder, world / "train.jsonl", world / "val.jsonl", device=device,
                                                 plot_path=out / f"reliability-{name}.png", **target)
        encoder = Encoder.load(folder, backend="torch", device=device)
        embedded[name] = {"val": embed(encoder, val), "test": embed(encoder, test)}
        classifier = encoder.category_classifier
        report["classifier"][name] = {
            modality: classifier_figures(encoder, embedded[name]["test"], modality, classifier.thresholds(modality))
            for modality in MODALITIES}
        report["classifier_compared"][name] = {
            modality: classifier_figures(encoder, embedded[name]["test"], modality,
                                         thresholds_for(encoder, embedded[name]["val"], modality, *compared))
            for modality in MODALITIES}
        if encoder.inference.classifies:
            score = encoder.inference.unsafe_scores
            report["distance"][name] = {
                modality: single_score_figures(score(embedded[name]["test"][modality]["safe"]),
                                               score(embedded[name]["test"][modality]["unsafe"]),
                                               embedded[name]["test"][modality]["category"],
                                               encoder.inference.calibrated_threshold(modality))
                for modality in MODALITIES}
    if all(name in embedded for name in SHIFT_PAIR):
        base, safe = (embedded[name] for name in SHIFT_PAIR)
        for modality in MODALITIES:
            shifts = {split: {kind: shift_score(base[split][modality][kind], safe[split][modality][kind])
                              for kind in ("safe", "unsafe")} for split in ("val", "test")}
            threshold = calibrate_threshold(shifts["val"]["safe"], shifts["val"]["unsafe"])
            report["shift"][modality] = single_score_figures(shifts["test"]["safe"], shifts["test"]["unsafe"],
                                                             base["test"][modality]["category"], threshold)
    return report


def series(report: dict) -> dict[str, dict[str, dict]]:
    """Every score's figures by modality: ``{label: {modality: figures}}``."""
    found = {f"classifier on {name}": figures for name, figures in report["classifier"].items()}
    found.update({f"distance ({name})": figures for name, figures in report["distance"].items()})
    if report["shift"]:
        found["shift score"] = report["shift"]
    return found


def auc_cell(figures: dict) -> str:
    low, high = figures["auc_vs_safe_interval"]
    return f"{figures['auc_vs_safe']:.3f} [{low:.2f}, {high:.2f}]"


def markdown(report: dict) -> str:
    scores = series(report)
    target = next(iter(report["fit"].values()))["target"]
    lines = [f"# Per-category moderation scores on the demo world ({report['test_rows']} test rows; classifier "
             f"thresholds for a target {target['kind']} of {target['value']:g})", ""]
    for modality in MODALITIES:
        categories = list(next(iter(scores.values()))[modality]["categories"])
        lines += [f"## {modality}", "", "ROC AUC of each category's items against the safe items [95% bootstrap "
                  "interval]:", ""]
        rows = [[category, *(auc_cell(figures[modality]['categories'][category]) for figures in scores.values())]
                for category in categories]
        rows.append(["all unsafe", *(f"{figures[modality]['unsafe']['auc']:.3f}" for figures in scores.values())])
        lines += [markdown_table(["category", *scores], rows), ""]
        classifiers = {label: figures for label, figures in scores.items() if label.startswith("classifier")}
        lines += ["Telling the categories apart (the classifier's ROC AUC against every other item) and its "
                  "precision / recall at the stored thresholds:", ""]
        rows = [[category, *(f"{figures[modality]['categories'][category]['auc_vs_rest']:.3f}, "
                             f"{100 * figures[modality]['categories'][category]['precision']:.1f}% / "
                             f"{100 * figures[modality]['categories'][category]['recall']:.1f}%"
                             for figures in classifiers.values())] for category in categories]
        lines += [markdown_table(["category", *[f"{label}: AUC, P / R" for label in classifiers]], rows), ""]
        lines += ["The unsafe verdict (any category flagged; a single score above its threshold): its precision, "
                  "recall and share of safe items flagged, and the share of each category's items it flags:", ""]
        rows = [[label, f"{100 * figures[modality]['unsafe']['precision']:.1f}%",
                 f"{100 * figures[modality]['unsafe']['recall']:.1f}%",
                 f"{100 * figures[modality]['unsafe']['safe_flagged']:.1f}%",
                 *(f"{100 * figures[modality]['categories'][category]['flagged_unsafe']:.1f}%"
                   for category in categories)]
                for label, figures in scores.items()]
        lines += [markdown_table(["score", "precision", "recall", "safe flagged", *categories], rows), ""]
        compared = report["compared_target"]
        lines += [f"The classifiers with thresholds for a target {compared['kind']} of {compared['value']:g} instead "
                  f"(chosen on the validation split from the same fitted heads): precision / recall of each category, "
                  f"then the verdict's precision, recall and share of safe items flagged:", ""]
        rows = [[f"classifier on {name}",
                 *(f"{100 * figures[modality]['categories'][category]['precision']:.1f}% / "
                   f"{100 * figures[modality]['categories'][category]['recall']:.1f}%" for category in categories),
                 f"{100 * figures[modality]['unsafe']['precision']:.1f}% / "
                 f"{100 * figures[modality]['unsafe']['recall']:.1f}%",
                 f"{100 * figures[modality]['unsafe']['safe_flagged']:.1f}%"]
                for name, figures in report["classifier_compared"].items()]
        lines += [markdown_table(["score", *categories, "verdict P / R", "safe flagged"], rows), ""]
    return "\n".join(lines)


def draw(report: dict, path: Path) -> None:
    panels = {}
    for modality in MODALITIES:
        panel = {}
        for label, figures in series(report).items():
            for category, values in figures[modality]["categories"].items():
                low, high = values["auc_vs_safe_interval"]
                panel.setdefault(category, {})[label] = (100 * values["auc_vs_safe"], (100 * low, 100 * high))
        panels[f"{modality}: ROC AUC of the category against the safe items (95% bootstrap interval)"] = panel
    draw_grouped_bars(panels, path, title="Per-category moderation scores on the demo world's test split")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="A finished safeclip demo folder.")
    parser.add_argument("--out", type=Path, required=True, help="Where the model copies and results go.")
    parser.add_argument("--models", nargs="+", default=["base", "safe-clip", "hysac"],
                        help="The demo's model folders to fit a classifier on.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target-precision", type=float, help="As for safeclip classify fit (default: 0.9).")
    parser.add_argument("--target-recall", type=float, help="As for safeclip classify fit.")
    parser.add_argument("--compare-target", default="recall=0.95", metavar="KIND=VALUE",
                        help="Also evaluate the fitted classifiers with thresholds for this target.")
    parser.add_argument("--reuse-fitted", action="store_true",
                        help="Keep the classifiers an earlier run fitted in OUT/models instead of fitting again.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    target = {"target_recall": args.target_recall, "target_precision": args.target_precision}
    kind, _, value = args.compare_target.partition("=")
    report = measure(args.demo, args.out, args.models, args.device, target, (kind, float(value)), args.reuse_fitted)
    report["machine"] = machine_info()
    write_json(args.out / "category-scores.json", report)
    (args.out / "category-scores.md").write_text(markdown(report) + "\n", encoding="utf-8")
    draw(report, args.out / "category-auc.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
