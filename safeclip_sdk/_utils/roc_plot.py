"""ROC curves drawn as a PNG with PIL alone (no plotting library needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import SafeclipError
from .files import atomic_write

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
GRID = (225, 225, 225)
INK = (40, 40, 40)


def draw_roc_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                    operating_points: Mapping[str, tuple[float, float]] | None = None, title: str = "ROC",
                    size: int = 560) -> Path:
    """Draw ``{label: (fpr, tpr)}`` (fractions, in curve order) on one chart and write it as a PNG.

    ``operating_points`` (``{label: (fpr, tpr)}``) mark where a chosen threshold sits on a curve.
    The chance diagonal is dashed; the legend shows each label in its curve's colour.
    """
    if not curves:
        raise SafeclipError(f"{path}: no ROC curve to draw (no modality has both safe and unsafe items)")
    image = roc_image(curves, operating_points=operating_points, title=title, size=size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def roc_image(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
              operating_points: Mapping[str, tuple[float, float]] | None = None, title: str = "ROC",
              size: int = 560) -> Image.Image:
    """The chart :func:`draw_roc_curves` writes, as a PIL image."""
    font = ImageFont.load_default(size=13)
    margin_left, margin_right, margin_top, margin_bottom = 64, 24, 48, 56
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    left, top = margin_left, margin_top
    right, bottom = size - margin_right, size - margin_bottom

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * (right - left), bottom - tpr * (bottom - top)

    for step in range(11):
        value = step / 10
        x, y = xy(value, value)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(left, y), (right, y)], fill=GRID)
        if step % 2 == 0:
            draw.text((x, bottom + 6), f"{value:.1f}", fill=INK, font=font, anchor="mt")
            draw.text((left - 6, y), f"{value:.1f}", fill=INK, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=INK)
    for start in range(0, 100, 4):  # dashed chance diagonal
        draw.line([xy(start / 100, start / 100), xy((start + 2) / 100, (start + 2) / 100)], fill=(150, 150, 150))
    for index, (label, (fpr, tpr)) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = [xy(float(x), float(y)) for x, y in zip(fpr, tpr)]
        draw.line(points, fill=colour, width=3, joint="curve")
        if operating_points and label in operating_points:
            x, y = xy(*operating_points[label])
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=INK, fill=colour, width=2)
        legend_y = bottom - 18 - 16 * (len(curves) - 1 - index)
        draw.line([(right - 200, legend_y), (right - 180, legend_y)], fill=colour, width=3)
        draw.text((right - 174, legend_y), label, fill=INK, font=font, anchor="lm")
    draw.text((size / 2, 18), title, fill=INK, font=font, anchor="mm")
    draw.text(((left + right) / 2, size - 18), "false-positive rate (safe items flagged)", fill=INK, font=font,
              anchor="mm")
    axis_label = Image.new("RGB", (bottom - top, 16), "white")
    ImageDraw.Draw(axis_label).text(((bottom - top) / 2, 8), "true-positive rate (unsafe items flagged)",
                                    fill=INK, font=font, anchor="mm")
    image.paste(axis_label.rotate(90, expand=True), (8, top))
    return image
