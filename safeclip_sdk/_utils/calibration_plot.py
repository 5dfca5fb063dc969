"""The calibration curve of an unsafe-score threshold as one PNG (PIL only): ROC curves on the left,
accuracy against the threshold on the right, the chosen thresholds marked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write
from .roc_plot import COLOURS, GRID, INK, roc_image


def draw_calibration(report: Mapping[str, Any], path: str | os.PathLike, *, size: int = 560) -> Path:
    """Write the curves of a :func:`safeclip_sdk.runtime.classify.calibrate_model` report as a PNG.

    Each calibration (``all``, then each modality) is one ROC curve, with a dot where its
    threshold sits; the right panel shows each one's accuracy against the threshold.
    """
    calibrations = {"all": report["calibration"], **report.get("calibration_modality", {})}
    curves = {name: (result["roc"]["fpr"], result["roc"]["tpr"]) for name, result in calibrations.items()}
    points = {name: (result["at_threshold"]["fpr"] / 100.0, 1.0 - result["at_threshold"]["fnr"] / 100.0)
              for name, result in calibrations.items()}
    left = roc_image(curves, operating_points=points, title="ROC of the distance from the origin", size=size)
    right = _accuracy_image(calibrations, size)
    image = Image.new("RGB", (2 * size, size), "white")
    image.paste(left, (0, 0))
    image.paste(right, (size, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def _accuracy_image(calibrations: Mapping[str, Mapping[str, Any]], size: int) -> Image.Image:
    font = ImageFont.load_default(size=13)
    thresholds = [float(t) for result in calibrations.values() for t in result["accuracy_curve"]["threshold"]]
    low, high = min(thresholds), max(thresholds)
    high = high if high > low else low + 1.0
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 64, 48, size - 24, size - 56

    def xy(threshold: float, value: float) -> tuple[float, float]:
        threshold = min(max(threshold, low), high)
        return left + (threshold - low) / (high - low) * (right - left), bottom - value * (bottom - top)

    for step in range(11):
        x, y = xy(low + step / 10 * (high - low), step / 10)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(left, y), (right, y)], fill=GRID)
        if step % 2 == 0:
            draw.text((x, bottom + 6), f"{low + step / 10 * (high - low):.2f}", fill=INK, font=font, anchor="mt")
            draw.text((left - 6, y), f"{step / 10:.1f}", fill=INK, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=INK)
    for index, (name, result) in enumerate(calibrations.items()):
        colour = COLOURS[index % len(COLOURS)]
        curve = result["accuracy_curve"]
        draw.line([xy(float(t), float(v)) for t, v in zip(curve["threshold"], curve["accuracy"])], fill=colour,
                  width=3)
        x, _ = xy(float(result["threshold"]), 0.0)
        for start in range(int(top), int(bottom), 8):  # dashed line at the chosen threshold
            draw.line([(x, start), (x, min(start + 4, bottom))], fill=colour, width=2)
        legend_y = bottom - 18 - 16 * (len(calibrations) - 1 - index)
        draw.line([(right - 200, legend_y), (right - 180, legend_y)], fill=colour, width=3)
        draw.text((right - 174, legend_y), f"{name}: threshold {float(result['threshold']):.3f}", fill=INK,
                  font=font, anchor="lm")
    draw.text((size / 2, 18), "accuracy against the threshold (dashed: chosen)", fill=INK, font=font, anchor="mm")
    draw.text(((left + right) / 2, size - 18), "threshold (distance from the origin)", fill=INK, font=font,
              anchor="mm")
    return image
