"""Grouped bar charts with error bars, drawn as a PNG with PIL alone (like ``roc_plot``).

One panel per figure (stacked), one group of bars per category, one bar per series (a search
mode), each with its confidence interval as a whisker. Values are percentages (0-100).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write
from .roc_plot import COLOURS, GRID, INK

Bar = tuple[float, tuple[float, float]]  # value, (low, high)
MORE_COLOURS = [*COLOURS, (255, 127, 14), (140, 86, 75)]


def draw_grouped_bars(panels: Mapping[str, Mapping[str, Mapping[str, Bar]]], path: str | os.PathLike, *,
                      title: str, panel_height: int = 260) -> Path:
    """Draw ``{panel title: {group: {series: (value, (low, high))}}}`` and write it as a PNG.

    Every panel shares the series (their colours and the legend); a missing bar is left out.
    """
    series = list(dict.fromkeys(name for groups in panels.values() for bars in groups.values() for name in bars))
    groups = list(dict.fromkeys(group for groups in panels.values() for group in groups))
    font = ImageFont.load_default(size=13)
    left, right_margin, top_margin, legend_height = 56, 16, 40, 22 + 16 * len(series)
    bar_width, gap = 14, 18
    group_width = max(bar_width * len(series) + gap, 96)  # room for the group's label
    width = max(560, left + right_margin + group_width * len(groups))
    label_height = 44
    height = top_margin + len(panels) * (panel_height + label_height) + legend_height
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width / 2, 16), title, fill=INK, font=font, anchor="mm")
    for index, (panel, bars_by_group) in enumerate(panels.items()):
        top = top_margin + index * (panel_height + label_height) + 16
        bottom = top + panel_height - 24
        right = width - right_margin

        def y_of(value: float) -> float:
            return bottom - max(0.0, min(100.0, value)) / 100 * (bottom - top)

        draw.text((left, top - 10), panel, fill=INK, font=font, anchor="lm")
        for step in range(0, 101, 20):
            y = y_of(step)
            draw.line([(left, y), (right, y)], fill=GRID)
            draw.text((left - 6, y), f"{step}%", fill=INK, font=font, anchor="rm")
        draw.rectangle([left, top, right, bottom], outline=INK)
        for group_index, group in enumerate(groups):
            x0 = left + (group_width - bar_width * len(series)) / 2 + group_index * group_width
            draw.text((x0 + bar_width * len(series) / 2, bottom + 6), _short(group), fill=INK, font=font, anchor="mt")
            for series_index, name in enumerate(series):
                bar = bars_by_group.get(group, {}).get(name)
                if bar is None:
                    continue
                value, (low, high) = bar
                x = x0 + series_index * bar_width
                colour = MORE_COLOURS[series_index % len(MORE_COLOURS)]
                draw.rectangle([x + 1, y_of(value), x + bar_width - 1, bottom], fill=colour)
                middle = x + bar_width / 2
                draw.line([(middle, y_of(low)), (middle, y_of(high))], fill=INK, width=1)
                for end in (low, high):
                    draw.line([(middle - 3, y_of(end)), (middle + 3, y_of(end))], fill=INK, width=1)
    legend_top = height - legend_height + 8
    for series_index, name in enumerate(series):
        y = legend_top + 16 * series_index
        draw.rectangle([left, y - 5, left + 18, y + 5], fill=MORE_COLOURS[series_index % len(MORE_COLOURS)])
        draw.text((left + 24, y), name, fill=INK, font=font, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def _short(label: str, limit: int = 14) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "."
