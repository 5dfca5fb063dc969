"""The demo's ``--all-methods`` stage: every registered safety method side by side on the demo world.

Each method other than the demo's default one is fine-tuned from the demo's base CLIP with
exactly the settings of the default run (LoRA, epochs, batch size, learning rate, seed; each
method's own section at its defaults), then ONE evaluation ranks the base and every method (a
method that transforms queries with and without it) on the same test split: the four recall
settings, the unsafe top-1 rates, the safe-query leak, the zero-shot check and, for methods that
classify, their classification figures. Each method whose models embed into the cosine space also
gets the deployment comparison over a collection embedded with the base model (query side only
against a full reindex). The results go to ``methods.md``, ``methods.json`` and ``methods.png``
in the demo folder. Trained folders are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..data import load_dataset
from ..evaluation.deployment import compare_deployments
from ..evaluation.protocol import EvalReport, evaluate, untransformed_row
from ..evaluation.verdict import judge
from ..index.contract import FULL_REINDEX, QUERY_SIDE
from ..methods import DEFAULT_METHOD, available_methods, get_method, load_checked_model
from ..model.spaces import COSINE
from ..training.run import train
from .settings import method_config
from ..metrics.retrieval import (IMAGE_TO_TEXT, TEXT_TO_IMAGE, UNSAFE_IMAGE_TO_ALL_TEXTS, UNSAFE_IMAGE_TO_UNSAFE_TEXTS,
                                 UNSAFE_TEXT_TO_ALL_IMAGES, UNSAFE_TEXT_TO_UNSAFE_IMAGES)
from .._utils.files import atomic_write, atomic_write_text

DEPLOYMENT_MODES = {QUERY_SIDE: "query side (base vectors kept)", FULL_REINDEX: "full reindex"}
QUERY_DIRECTIONS = {"text queries": "text", "image queries": "image"}


def _cosine(method: str) -> bool:
    return get_method(method).space_kinds == (COSINE,)


def _transform(method: str) -> str | None:
    return get_method(method).inference_class.query_transform


def _deployment_notes() -> list[str]:
    """Why a method whose models embed into another space has no query-side deployment row."""
    notes = []
    for method in available_methods():
        if not _cosine(method):
            cls = get_method(method)
            shown = f", with and without {_transform(method)}" if _transform(method) else ""
            notes.append(f"{cls.display_name} has no query-side deployment: its {cls.space_kinds[0]} queries cannot "
                         f"be compared with a base model's cosine vectors, so its collection is always fully "
                         f"reindexed (its rows in the table above are that deployment{shown}).")
    return notes


@dataclass
class MethodComparison:
    """What :func:`compare_all_methods` measured and where it wrote it."""

    model_dirs: dict[str, Path]
    evaluation: EvalReport
    deployments: dict[str, Any]  # method -> DeploymentReport (cosine methods only)
    # "base" and each method -> the verdict's figures on the test split, in the recommended deployment
    recommended: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    markdown_path: Path | None = None
    json_path: Path | None = None
    picture_path: Path | None = None

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per evaluated model: R@1 of each direction, the unsafe top-1 rates, the leak, zero-shot (%)."""
        rows = []
        for name, result in self.evaluation.results.items():
            retrieval, leak = result["retrieval"], result.get("leak") or {}
            rows.append({
                "model": name,
                **{f"{direction} R@1": retrieval.get(direction, {}).get("R@1")
                   for direction in (TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNSAFE_TEXT_TO_ALL_IMAGES,
                                     UNSAFE_IMAGE_TO_ALL_TEXTS, UNSAFE_TEXT_TO_UNSAFE_IMAGES,
                                     UNSAFE_IMAGE_TO_UNSAFE_TEXTS)},
                **{f"unsafe top-1 {direction}": retrieval.get(direction, {}).get("unsafe_top1")
                   for direction in (UNSAFE_TEXT_TO_ALL_IMAGES, UNSAFE_IMAGE_TO_ALL_TEXTS)},
                **{f"leak {direction}": leak.get(direction) for direction in ("T->V+V*", "V->T+T*")},
                "zero-shot top-1": (result.get("zero_shot") or {}).get("top1"),
            })
        return rows

    def recommended_rows(self) -> list[dict[str, Any]]:
        """Base and each method in the deployment safeclip recommends for it, on the test split:
        per query direction the unsafe top-1, the safe-query leak and the safe R@1 (%), and the
        classifier's ROC AUC per modality where the method classifies."""
        rows = []
        for name, figures in self.recommended.items():
            row: dict[str, Any] = {"model": name, "deployment": figures.get("deployment", "-")}
            for direction, short in QUERY_DIRECTIONS.items():
                values = figures.get(direction, {})
                row.update({f"{short} unsafe top-1": values.get("unsafe top-1"), f"{short} leak": values.get("leak"),
                            f"{short} safe R@1": values.get("safe R@1")})
            for modality in ("text", "image"):
                row[f"{modality} AUC"] = figures.get("classifier", {}).get(modality, {}).get("auc")
            rows.append(row)
        return rows

    def deployment_rows(self) -> list[dict[str, Any]]:
        """Per cosine method and deployment, per query direction: unsafe top-1, leak and both R@1 (%)."""
        rows = []
        for method, report in self.deployments.items():
            for mode, title in DEPLOYMENT_MODES.items():
                row: dict[str, Any] = {"method": method, "deployment": title}
                for direction, short in QUERY_DIRECTIONS.items():
                    metrics = report.modes.get(mode, {}).get(direction, {})
                    unsafe, safe = metrics.get("unsafe_queries", {}), metrics.get("safe_queries", {})
                    row.update({f"{short} unsafe top-1": unsafe.get("unsafe_top1"), f"{short} leak": safe.get("leak"),
                                f"{short} unsafe R@1": unsafe.get("R@1"), f"{short} safe R@1": safe.get("R@1")})
                rows.append(row)
        return rows

    def verdicts(self) -> dict[str, dict[str, Any]]:
        """Each trained model's verdict, as its training run recorded it in ``safeclip.json``."""
        found = {}
        for name, path in self.model_dirs.items():
            metadata = json.loads((Path(path) / "safeclip.json").read_text(encoding="utf-8"))
            if metadata.get("verdict"):
                found[name] = metadata["verdict"]
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"models": {name: str(path) for name, path in self.model_dirs.items()},
                "verdicts": self.verdicts(),
                "recommended": self.recommended_rows(),
                "summary": self.summary_rows(), "deployment_summary": self.deployment_rows(),
                "evaluation": self.evaluation.to_dict(),
                "deployments": {name: report.to_dict() for name, report in self.deployments.items()},
                "seconds": self.seconds}

    def to_markdown(self) -> str:
        """The recommended-deployment table, the summary table, the deployment table, then the full
        evaluation report."""
        lines = []
        recommended = self.recommended_rows()
        if recommended:
            header = list(recommended[0])
            lines += ["| " + " | ".join(f"{key} ↓" if "top-1" in key or "leak" in key else key for key in header) + " |",
                      "|" + "---|" * len(header)]
            lines += ["| " + " | ".join([row["model"], row["deployment"]]
                                        + [_cell(row[key]) if "AUC" not in key else _auc(row[key]) for key in header[2:]])
                      + " |" for row in recommended]
            lines += ["", "Each model in the deployment safeclip recommends for it (cosine methods: the safe model on the "
                          "query side over the base model's vectors; a model with a space of its own: its own vectors, "
                          "queries transformed), on the test split, measured as a training run's verdict measures it "
                          "(text queries against the N safe + N unsafe images, image queries against the captions), "
                          "in %; ROC AUC as a fraction.", ""]
        summary = self.summary_rows()
        header = list(summary[0])
        titles = [f"{key} ↓" if key.startswith(("unsafe", "leak")) else key for key in header]
        lines += ["| " + " | ".join(titles) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([row["model"]] + [_cell(row[key]) for key in header[1:]]) + " |"
                  for row in summary]
        lines += ["", "R@1, unsafe top-1 (unsafe queries whose best match is unsafe, ↓), safe-query leak (safe "
                      "queries whose best match is unsafe, ↓) and zero-shot top-1 in %, all models on the same "
                      f"{self.evaluation.num_items} test quadruplets; `T*->V*`, `V*->T*`: unsafe queries finding their "
                      "own unsafe counterpart among the unsafe items (what a moderation team still finds)"
                      + "".join(f"; `{untransformed_row('', _transform(method)).strip()}`: "
                                f"{get_method(method).display_name} with its queries left where they are"
                                for method in available_methods() if _transform(method)) + "."]
        deployment = self.deployment_rows()
        if deployment:
            header = list(deployment[0])
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join([row["method"], row["deployment"]] + [_cell(row[key]) for key in header[2:]])
                      + " |" for row in deployment]
            lines += ["", "Deployments over a collection embedded with the base model (text queries against the "
                          "test images, image queries against the test captions), in %.", ""]
            lines += [f"- {note}" for note in _deployment_notes()]
        verdicts = self.verdicts()
        if verdicts:
            lines += ["", "| method | verdict (validation split) | deployment | what failed |", "|---|---|---|---|"]
            lines += [f"| {name} | {'safer' if v['safer'] else 'NOT safer'} | {v['deployment']} | "
                      f"{'; '.join(v['failures']) or '-'} |" for name, v in verdicts.items()]
            lines += ["", "Each training run's verdict: the model against its base on the validation split, in "
                          "the deployment safeclip recommends for it (docs/training.md has the rule)."]
        lines += ["", "## Full evaluation", "", self.evaluation.to_markdown().rstrip()]
        if self.seconds:
            lines += ["", "Seconds: " + ", ".join(f"{name} {value}" for name, value in self.seconds.items()) + "."]
        return "\n".join(lines) + "\n"

    def save(self, out: Path) -> None:
        """Write ``methods.md``, ``methods.json`` and ``methods.png`` into ``out``."""
        self.markdown_path, self.json_path, self.picture_path = (out / "methods.md", out / "methods.json",
                                                                 out / "methods.png")
        atomic_write_text(self.json_path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        atomic_write_text(self.markdown_path, self.to_markdown())
        image = comparison_chart(self.recommended_rows())
        atomic_write(self.picture_path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def compare_all_methods(out: Path, base_dir: Path, safe_dir: Path, world: dict[str, Path], settings, *,
                        device: str = "auto", seed: int = 0, echo=print) -> MethodComparison:
    """Train every other method beside the demo's default one (reusing trained folders), evaluate
    all models together, compare the cosine methods' deployments, print and save it all."""
    seconds: dict[str, float] = {}

    def stage(name: str, started: float) -> None:
        seconds[name] = round(time.time() - started, 1)
        echo(f"[{name}] done in {seconds[name]} s")

    model_dirs = {DEFAULT_METHOD: safe_dir}
    for method in available_methods():
        if method == DEFAULT_METHOD:
            continue
        started = time.time()
        model_dirs[method] = out / method / "model"
        if not (model_dirs[method] / "safeclip.json").is_file():
            train(method_config(method, out, base_dir, world, settings, device=device, seed=seed))
        stage(f"{get_method(method).display_name} fine-tuning", started)

    started = time.time()
    evaluation = evaluate({"base": str(base_dir), **{name: str(path) for name, path in model_dirs.items()}},
                          world["test"], device=device)
    stage("method evaluation", started)

    started = time.time()
    deployments = {method: compare_deployments(str(base_dir), str(model_dirs[method]), world["test"],
                                               val_data=world["val"], device=device)
                   for method in model_dirs if _cosine(method)}
    stage("method deployments", started)

    started = time.time()
    recommended = _recommended(base_dir, model_dirs, world["test"], device)
    stage("recommended deployments", started)

    comparison = MethodComparison(model_dirs, evaluation, deployments, recommended, seconds)
    comparison.save(out)
    echo("\n" + comparison.to_markdown())
    return comparison


def _recommended(base_dir: Path, model_dirs: dict[str, Path], test_data: Path, device: str) -> dict[str, Any]:
    """The verdict's figures of base and every model on the test split, each in its recommended deployment."""
    items = load_dataset(test_data).items
    base = load_checked_model(str(base_dir), device="cpu" if device == "auto" else device)
    found: dict[str, Any] = {}
    for name, path in model_dirs.items():
        verdict = judge(load_checked_model(str(path)), base, items, data=str(test_data),
                        device="cpu" if device == "auto" else device)
        found.setdefault("base", {"deployment": "-", **verdict.base})
        found[name] = {"deployment": verdict.deployment, **verdict.model}
    return found


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# legend label -> recommended-deployment column (PIL's default font has no arrows: the title says which way is better;
# "leak": the safe-query leak)
CHART_METRICS = {key: key for key in ("text unsafe top-1", "image unsafe top-1", "text leak", "image leak",
                                      "text safe R@1", "image safe R@1")}
CHART_COLOURS = [(214, 39, 40), (255, 152, 150), (255, 127, 14), (255, 187, 120), (44, 160, 44), (152, 223, 138)]
INK, GRID = (40, 40, 40), (225, 225, 225)


def comparison_chart(rows: list[dict[str, Any]], *, width: int = 900, height: int = 420) -> Image.Image:
    """Grouped bars, one group per model in its recommended deployment: unsafe top-1 and leak
    (lower is better) and safe R@1 (higher), for text and image queries (%)."""
    font = ImageFont.load_default(size=13)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, width - 16, 64, height - 40
    for value in range(0, 101, 20):
        y = bottom - value / 100 * (bottom - top)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((left - 6, y), f"{value}", fill=INK, font=font, anchor="rm")
    group = (right - left) / max(len(rows), 1)
    bar = group * 0.8 / len(CHART_METRICS)
    for index, row in enumerate(rows):
        start = left + index * group + group * 0.1
        for position, key in enumerate(CHART_METRICS.values()):
            value = row.get(key)
            if value is None:
                continue
            x = start + position * bar
            y = bottom - value / 100 * (bottom - top)
            draw.rectangle([x, y, x + bar - 2, bottom], fill=CHART_COLOURS[position])
            draw.text((x + bar / 2 - 1, y - 2), f"{value:.0f}", fill=INK, font=font, anchor="mb")
        label = row["model"] if row["deployment"] == "-" else f"{row['model']} ({row['deployment']})"
        draw.text((left + (index + 0.5) * group, bottom + 8), label, fill=INK, font=font, anchor="mt")
    draw.line([(left, bottom), (right, bottom)], fill=INK)
    x = left
    for position, label in enumerate(CHART_METRICS):
        draw.rectangle([x, 36, x + 12, 48], fill=CHART_COLOURS[position])
        draw.text((x + 16, 42), label, fill=INK, font=font, anchor="lm")
        x += 24 + draw.textlength(label, font=font)
    draw.text((width / 2, 16), "Each model in its recommended deployment, demo test split, in % (unsafe top-1 and "
              "leak: lower is better; safe R@1: higher)", fill=INK, font=font, anchor="mm")
    return image


__all__ = ["MethodComparison", "compare_all_methods", "comparison_chart"]
