"""Reliability curves (predicted probability against the observed share) as one PNG, PIL only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write
from .roc_plot import COLOURS, GRID, INK


def draw_reliability(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | os.PathLike, *,
                     size: int = 560) -> Path:
    """Write ``{name: {"before": curve, "after": curve}}`` as a PNG, one panel per name.

    A curve is ``{"mean_probability", "observed", "count", "ece"}`` (see
    ``safeclip_sdk.metrics.category_calibration.reliability``): thin grey before temperature
    scaling, thick and coloured after, the perfect diagonal dashed, each point's size growing
    with its item count and each panel's ECE before and after in its legend.
    """
    panels = [_panel(name, stages, COLOURS[index % len(COLOURS)], size) for index, (name, stages) in
              enumerate(curves.items())]
    image = Image.new("RGB", (size * len(panels), size), "white")
    for index, panel in enumerate(panels):
        image.paste(panel, (index * size, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def _panel(name: str, stages: Mapping[str, Mapping[str, Any]], colour: tuple[int, int, int], size: int) -> Image.Image:
    font = ImageFont.load_default(size=13)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 64, 48, size - 24, size - 56

    def xy(probability: float, observed: float) -> tuple[float, float]:
        return left + probability * (right - left), bottom - observed * (bottom - top)

    for step in range(11):
        x, y = xy(step / 10, step / 10)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(left, y), (right, y)], fill=GRID)
        if step % 2 == 0:
            draw.text((x, bottom + 6), f"{step / 10:.1f}", fill=INK, font=font, anchor="mt")
            draw.text((left - 6, y), f"{step / 10:.1f}", fill=INK, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=INK)
    for start in range(0, 100, 4):
        draw.line([xy(start / 100, start / 100), xy((start + 2) / 100, (start + 2) / 100)], fill=(150, 150, 150))
    styles = {"before": ((160, 160, 160), 2), "after": (colour, 3)}
    total = max((sum(curve["count"]) for curve in stages.values()), default=1)
    for row, (stage, curve) in enumerate(stages.items()):
        fill, width = styles.get(stage, (colour, 3))
        points = [xy(float(p), float(o)) for p, o in zip(curve["mean_probability"], curve["observed"])]
        if len(points) > 1:
            draw.line(points, fill=fill, width=width)
        for (x, y), count in zip(points, curve["count"]):
            radius = 2 + 8 * (count / total) ** 0.5
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=INK, fill=fill)
        legend_y = bottom - 18 - 16 * (len(stages) - 1 - row)
        draw.line([(right - 230, legend_y), (right - 210, legend_y)], fill=fill, width=width)
        draw.text((right - 204, legend_y), f"{stage} temperature: ECE {float(curve['ece']):.3f}", fill=INK,
                  font=font, anchor="lm")
    draw.text((size / 2, 18), f"reliability of the {name} category scores", fill=INK, font=font, anchor="mm")
    draw.text(((left + right) / 2, size - 18), "predicted probability (one-vs-rest, every class)", fill=INK,
              font=font, anchor="mm")
    axis_label = Image.new("RGB", (bottom - top, 16), "white")
    ImageDraw.Draw(axis_label).text(((bottom - top) / 2, 8), "observed share", fill=INK, font=font, anchor="mm")
    image.paste(axis_label.rotate(90, expand=True), (8, top))
    return image
