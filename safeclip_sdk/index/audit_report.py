"""An audit's figures and its report: what each probe found, summed up per mode and category.

For each search mode, from the results the database returned for each probe:

- unsafe probes: ``unsafe_top1`` (share whose first result is unsafe), ``unsafe_topk`` (mean
  share of unsafe items among each probe's top-k results), and ``R@1`` / ``R@k`` over those with
  expected ids;
- safe probes: ``leak`` (share whose first result is unsafe), ``R@1`` / ``R@k``.

``R@K`` counts a probe as found when one of its expected ids is among its first K results. An
empty result list (a score filter that hid everything) is neither unsafe nor found. Every figure
is a percentage with its 95% interval (Wilson; a percentile bootstrap over probes for the top-k
share) and, for shares of probes, the count behind it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._utils.bars_plot import draw_grouped_bars
from .._utils.files import atomic_write_text
from ..metrics.intervals import bootstrap_mean, wilson
from ..metrics.report import JsonReport, percent, share_percent
from .probes import SAFE_LABEL, UNSAFE_LABEL, Probe

OVERALL = "overall"
INTERVAL_NOTE = ("Intervals are 95% (Wilson; bootstrap over probes for the top-k share). They are wide for small "
                 "probe sets: with ~200 probes a rate near 50% is known to about ±7 points, near 10% to about ±4; "
                 "differences inside the intervals are not evidence.")


@dataclass(frozen=True)
class Outcome:
    """What one probe found: whether each result (best first) is unsafe, and the 0-based rank of
    the first expected id among them (None when none was found or the probe expects none)."""

    unsafe: tuple[bool, ...]
    found_at: int | None


def figures(probes: list[Probe], outcomes: list[Outcome], k: int) -> dict[str, Any]:
    """``{"unsafe_probes": {...}, "safe_probes": {...}}`` for these probes (see the module docstring)."""
    result: dict[str, Any] = {}
    for label in (UNSAFE_LABEL, SAFE_LABEL):
        chosen = [outcome for probe, outcome in zip(probes, outcomes) if probe.label == label]
        if not chosen:
            continue
        top1 = [bool(outcome.unsafe and outcome.unsafe[0]) for outcome in chosen]
        group: dict[str, Any] = {"probes": len(chosen)}
        if label == UNSAFE_LABEL:
            group["unsafe_top1"] = _rate(top1)
            shares = [sum(outcome.unsafe) / len(outcome.unsafe) if outcome.unsafe else 0.0 for outcome in chosen]
            group["unsafe_topk"] = {"value": share_percent(sum(shares) / len(shares)),
                                    "ci": list(bootstrap_mean(shares))}
        else:
            group["leak"] = _rate(top1)
        with_expected = [(probe, outcome) for probe, outcome in zip(probes, outcomes)
                         if probe.label == label and probe.expected]
        if with_expected:
            for cut in sorted({1, k}):
                group[f"R@{cut}"] = _rate([outcome.found_at is not None and outcome.found_at < cut
                                           for _, outcome in with_expected])
        result[f"{label}_probes"] = group
    return result


def _rate(flags: list[bool]) -> dict[str, Any]:
    count = int(sum(flags))
    return {"value": percent(flags), "ci": list(wilson(count, len(flags))), "count": count, "of": len(flags)}


def mode_figures(probes: list[Probe], outcomes: list[Outcome], k: int) -> dict[str, Any]:
    """Overall figures and per category (probes without a category count only overall)."""
    categories = sorted({probe.category for probe in probes if probe.category})
    per_category = {}
    for category in categories:
        chosen = [(probe, outcome) for probe, outcome in zip(probes, outcomes) if probe.category == category]
        per_category[category] = figures([p for p, _ in chosen], [o for _, o in chosen], k)
    return {OVERALL: figures(probes, outcomes, k), "per_category": per_category}


def value(modes: dict[str, Any], mode: str, kind: str, name: str, category: str = OVERALL) -> float | None:
    """One figure's value from :attr:`AuditReport.modes` (None when not measured)."""
    group = modes[mode][OVERALL] if category == OVERALL else modes[mode]["per_category"].get(category, {})
    return group.get(kind, {}).get(name, {}).get("value")


@dataclass
class AuditReport(JsonReport):
    """An audit of one collection: ``modes[mode]`` holds the collection and vector searched, the
    score threshold (score filter), and the figures overall and per category."""

    store: str
    collection: str
    model: str | None
    base_model: str | None
    probes: dict[str, Any]
    k: int
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        k = self.k
        lines = [f"## Audit of '{self.collection}' on {self.store}", "",
                 f"{self.probes['probes'][UNSAFE_LABEL]} unsafe and {self.probes['probes'][SAFE_LABEL]} safe probes "
                 f"from {self.probes['path']}, top {k} results per probe through the database's own queries; an "
                 f"item is unsafe when its payload field '{self.probes['unsafe_field']}' is true.", "",
                 f"| mode | searched | unsafe top-1 ↓ | unsafe share of top-{k} ↓ | safe-query leak ↓ "
                 f"| safe R@1 ↑ | safe R@{k} ↑ |",
                 "|---|---|---|---|---|---|---|"]
        for mode, measured in self.modes.items():
            searched = f"{measured['collection']} `{measured['vector'] or '(unnamed)'}`"
            if measured.get("max_score") is not None:
                searched += f", score < {measured['max_score']:.4g}"
            cells = [_cell(self.modes, mode, kind, name) for kind, name in (
                ("unsafe_probes", "unsafe_top1"), ("unsafe_probes", "unsafe_topk"), ("safe_probes", "leak"),
                ("safe_probes", "R@1"), ("safe_probes", f"R@{k}"))]
            lines.append(f"| {mode} | {searched} | " + " | ".join(cells) + " |")
        categories = sorted({c for measured in self.modes.values() for c in measured["per_category"]})
        if categories:
            lines += ["", "Per category: unsafe top-1 of unsafe probes / leak of safe probes (probes).", "",
                      "| category | " + " | ".join(self.modes) + " |", "|---|" + "---|" * len(self.modes)]
            for category in categories:
                row = []
                for mode in self.modes:
                    group = self.modes[mode]["per_category"].get(category, {})
                    count = sum(group.get(kind, {}).get("probes", 0) for kind in ("unsafe_probes", "safe_probes"))
                    row.append(f"{_plain(self.modes, mode, 'unsafe_probes', 'unsafe_top1', category)} / "
                               f"{_plain(self.modes, mode, 'safe_probes', 'leak', category)} ({count})")
                lines.append(f"| {category} | " + " | ".join(row) + " |")
        lines += ["", INTERVAL_NOTE, *(f"\n{note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def save(self, *, json_path: str | os.PathLike | None = None, markdown_path: str | os.PathLike | None = None,
             plot_path: str | os.PathLike | None = None) -> None:
        for path, text in ((json_path, lambda: self.to_json()), (markdown_path, self.to_markdown)):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(Path(path), text())
        if plot_path is not None:
            self.plot(plot_path)

    def plot(self, path: str | os.PathLike) -> Path:
        """Per-category bars, one per mode, of the unsafe top-1 and the leak, with their intervals."""
        panels: dict[str, dict[str, dict[str, tuple]]] = {}
        for kind, name, title in (("unsafe_probes", "unsafe_top1", "unsafe top-1 of unsafe probes (lower is safer)"),
                                  ("safe_probes", "leak", "safe-query leak (lower is safer)")):
            panel: dict[str, dict[str, tuple]] = {}
            for mode, measured in self.modes.items():
                groups = {**measured["per_category"], OVERALL: measured[OVERALL]}
                for category, group in groups.items():
                    figure = group.get(kind, {}).get(name)
                    if figure is not None:
                        panel.setdefault(category, {})[mode] = (figure["value"], tuple(figure["ci"]))
            if panel:
                panels[title] = panel
        return draw_grouped_bars(panels, path, title=f"Audit of '{self.collection}': per category, each mode")

    @classmethod
    def from_json(cls, text: str) -> AuditReport:
        return cls(**json.loads(text))


def _cell(modes: dict[str, Any], mode: str, kind: str, name: str) -> str:
    group = modes[mode][OVERALL].get(kind, {}).get(name)
    if group is None:
        return "-"
    low, high = group["ci"]
    return f"{group['value']:.1f}% [{low:.1f}, {high:.1f}]"


def _plain(modes: dict[str, Any], mode: str, kind: str, name: str, category: str) -> str:
    found = value(modes, mode, kind, name, category)
    return "-" if found is None else f"{found:.1f}%"
