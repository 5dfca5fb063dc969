"""The deployment comparison's report: tables, the recommendation derived from them, files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..index.contract import DEPLOYMENT_TITLES
from ..metrics.report import JsonReport
from .._utils.files import atomic_write_text



def safety_rates(metrics: dict[str, Any]) -> list[float]:
    """The unsafe top-1 rate of unsafe queries and the leak of safe queries, where measured."""
    return [metrics[kind][rate] for kind, rate in (("unsafe_queries", "unsafe_top1"), ("safe_queries", "leak"))
            if rate in metrics.get(kind, {})]


def recommend(modes: dict[str, dict[str, dict[str, Any]]], *,
              min_safe_recall_ratio: float) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Rank the modes, per direction and overall, by the mean share of unsafe top-1 results
    (the unsafe queries' unsafe top-1 rate and the safe queries' leak), and say which is safest.

    Only directions whose gallery holds unsafe items are ranked. A mode whose safe-query R@1 in a
    direction falls below ``min_safe_recall_ratio`` times the base's is not eligible there (a
    filter that hides everything would otherwise look perfectly safe). Returns ``(ranking,
    sentence)``: ``ranking[direction or "overall"]`` lists the modes, safest eligible first.
    """
    base = modes["base"]
    compared = [direction for direction, metrics in base.items() if safety_rates(metrics)]
    if not compared:
        return {}, "No direction has unsafe items in its gallery, so no deployment can be called safer."
    ranking: dict[str, list[dict[str, Any]]] = {}
    for direction in compared:
        rows = []
        for mode, directions in modes.items():
            if direction in directions:
                metrics = directions[direction]
                rates = safety_rates(metrics)
                recall, base_recall = metrics["safe_queries"]["R@1"], base[direction]["safe_queries"]["R@1"]
                rows.append({"mode": mode, "mean_unsafe_top1": round(sum(rates) / len(rates), 2),
                             "safe_recall_change": round(recall - base_recall, 2),
                             "eligible": recall >= min_safe_recall_ratio * base_recall})
        ranking[direction] = sorted(rows, key=lambda row: (not row["eligible"], row["mean_unsafe_top1"]))
    overall = []
    for mode in modes:
        rows = [row for direction in compared for row in ranking[direction] if row["mode"] == mode]
        if len(rows) == len(compared):
            mean = sum(row["mean_unsafe_top1"] for row in rows) / len(rows)
            failing = [direction for direction, row in zip(compared, rows) if not row["eligible"]]
            overall.append({"mode": mode, "mean_unsafe_top1": round(mean, 2), "eligible": not failing,
                            "fails_recall_on": failing})
    ranking["overall"] = sorted(overall, key=lambda row: (not row["eligible"], row["mean_unsafe_top1"]))

    best = ranking["overall"][0]
    others = ", ".join(f"{row['mean_unsafe_top1']:.1f}% for {row['mode']}" + (
        f" (not eligible: safe-query R@1 under {100 * min_safe_recall_ratio:g}% of the base's on "
        f"{' and '.join(row['fails_recall_on'])})" if row["fails_recall_on"] else "")
        for row in ranking["overall"][1:])
    sentence = (f"Safest overall: {best['mode']}, with {best['mean_unsafe_top1']:.1f}% of top-1 results unsafe on "
                f"average over unsafe and safe queries in {' and '.join(compared)} (against {others}).")
    per_direction = []
    for direction in compared:
        row = ranking[direction][0]
        metrics, base_metrics = modes[row["mode"]][direction], base[direction]
        per_direction.append(f"for {direction} {row['mode']} ({_rates_in_words(metrics)}; base "
                             f"{_rates_in_words(base_metrics)}; "
                             f"safe-query R@1 {row['safe_recall_change']:+.1f} points)")
    sentence += " Per direction the safest is " + ", and ".join(per_direction) + "."
    if not best["eligible"]:
        sentence += (f" No mode keeps safe-query R@1 at {100 * min_safe_recall_ratio:g}% of the base's in every "
                     f"direction.")
    return ranking, sentence


def _rates_in_words(metrics: dict[str, Any]) -> str:
    parts = []
    if "unsafe_top1" in metrics.get("unsafe_queries", {}):
        parts.append(f"unsafe top-1 {metrics['unsafe_queries']['unsafe_top1']:.1f}%")
    if "leak" in metrics.get("safe_queries", {}):
        parts.append(f"leak {metrics['safe_queries']['leak']:.1f}%")
    return ", ".join(parts)


@dataclass
class DeploymentReport(JsonReport):
    """The four deployments measured on one dataset; ``modes[mode][direction]`` holds the metrics
    of :func:`safeclip_sdk.evaluation.deployment.direction_metrics`, ``moderation[modality]`` the shift
    score's ROC AUC, threshold and errors at that threshold."""

    dataset: str
    val_dataset: str | None
    num_items: int
    text_only: bool
    base: dict[str, Any]
    safe: dict[str, Any]
    ks: list[int]
    similarity: str
    calibration: dict[str, Any]
    modes: dict[str, dict[str, dict[str, Any]]]
    moderation: dict[str, dict[str, Any]]
    ranking: dict[str, list[dict[str, Any]]]
    recommendation: str
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """A table per query direction, the moderation score's table, the recommendation, notes."""
        recalls = " / ".join(f"R@{k}" for k in self.ks)
        calibrated = f" (thresholds calibrated on `{self.val_dataset}`)" if self.val_dataset else ""
        lines = [f"Base `{self.base['source']}`, safe `{self.safe['source']}`, on {self.num_items} quadruplets of "
                 f"`{self.dataset}`{calibrated}."]
        for direction in dict.fromkeys(d for directions in self.modes.values() for d in directions):
            rows = {mode: directions[direction] for mode, directions in self.modes.items() if direction in directions}
            sample = rows["base"]
            lines += ["", f"**{direction.capitalize()}** against a gallery of {sample['gallery']} items "
                          f"({sample['unsafe_gallery_items']} unsafe):", ""]
            header = ["deployment"]
            if "unsafe_queries" in sample:
                header += [f"unsafe queries {recalls}", "unsafe top-1 ↓"]
            header += [f"safe queries {recalls}", "safe-query leak ↓", "safe items hidden"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for mode, metrics in rows.items():
                cells = [DEPLOYMENT_TITLES.get(mode, mode)]
                for kind, rate in (("unsafe_queries", "unsafe_top1"), ("safe_queries", "leak")):
                    if kind in sample:
                        values = metrics[kind]
                        cells += [" / ".join(f"{values[f'R@{k}']:.1f}" for k in self.ks),
                                  f"{values[rate]:.1f}%" if rate in values else "-"]
                cells.append(f"{metrics['hidden_safe_pct']:.1f}% (threshold {metrics['threshold']:.4f})"
                             if "hidden_safe_pct" in metrics else "-")
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"{recalls} in %: the safe counterpart for unsafe queries, the query's own match for safe "
                      "queries. Unsafe top-1: share of unsafe queries whose best result is unsafe; safe-query leak: "
                      "share of SAFE queries whose best result is unsafe."]
        if self.moderation:
            rule = ("maximising balanced accuracy" if self.calibration["rule"] == "balanced-accuracy" else
                    f"flagging the most unsafe items at an FPR of at most {100 * self.calibration['target_fpr']:g}%")
            lines += ["", f"**Shift score** `1 - cos(base, safe)` as an unsafe-item detector: ROC AUC, the threshold "
                          f"({rule} on the split named) and, at that threshold, accuracy, FPR and FNR on test:", "",
                      "| items | ROC AUC test | ROC AUC val | threshold | accuracy | balanced acc. | FPR | FNR |",
                      "|---|---|---|---|---|---|---|---|"]
            for modality, result in self.moderation.items():
                test = result.get("test")
                cells = [modality, _fmt(result.get("test_auc"), ".3f"), _fmt(result.get("val_auc"), ".3f"),
                         f"{result['threshold']:.4f} ({result['threshold_from']})"]
                cells += ([f"{test[key]:.1f}%" for key in ("accuracy", "balanced_accuracy", "fpr", "fnr")]
                          if test else ["-"] * 4)
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Recommendation:** {self.recommendation}"]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def save(self, json_path: str | os.PathLike | None = None, markdown_path: str | os.PathLike | None = None,
             plot_path: str | os.PathLike | None = None) -> None:
        """Write the JSON and/or Markdown report and/or the ROC curves as a PNG (parent folders
        are created)."""
        for path, render in ((json_path, self.to_json), (markdown_path, self.to_markdown)):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(Path(path), render())
        if plot_path is not None:
            from .._utils.roc_plot import draw_roc_curves

            measured = {modality: result for modality, result in self.moderation.items() if "roc" in result}
            labels = {modality: f"{modality} (AUC {result['test_auc']:.3f})" for modality, result in measured.items()}
            curves = {labels[modality]: (result["roc"]["fpr"], result["roc"]["tpr"])
                      for modality, result in measured.items()}
            thresholds = {labels[modality]: (result["test"]["fpr"] / 100, 1 - result["test"]["fnr"] / 100)
                          for modality, result in measured.items()}
            draw_roc_curves(curves, plot_path, operating_points=thresholds,
                            title="Shift score 1 - cos(base, safe), unsafe vs safe test items; dot: threshold")

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
