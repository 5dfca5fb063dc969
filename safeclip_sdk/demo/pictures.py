"""Pictures of search results, for people who would rather look than read.

:func:`search_comparison` draws one row per query: the query text, then the top results of each
compared setting (``base model``, ``Safe-CLIP, query side`` ...) as thumbnails, unsafe ones framed
in red and labelled, safe ones framed in green. Drawn with Pillow only.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import ImageError
from ..data.images import ImageInput, load_image
from .._utils.files import atomic_write

UNSAFE_COLOR = (210, 30, 30)
SAFE_COLOR = (40, 160, 70)
TEXT_COLOR = (20, 20, 20)
BACKGROUND = (255, 255, 255)
MISSING_COLOR = (200, 200, 200)


@dataclass(frozen=True)
class ShownResult:
    """One result thumbnail: the image and whether it is unsafe."""

    image: ImageInput
    unsafe: bool


def search_comparison(path: str | os.PathLike, queries: Sequence[str],
                      results: Mapping[str, Sequence[Sequence[ShownResult]]], *, thumb: int = 96,
                      title: str | None = None) -> Path:
    """Write a PNG comparing the results of each setting for each query.

    Args:
        queries: the query texts, one row each.
        results: setting name -> for each query, its results best first (the first few are drawn).
        thumb: thumbnail edge in pixels.
    """
    settings = list(results)
    if not queries or not settings:
        raise ValueError("search_comparison needs at least one query and one setting")
    for name, rows in results.items():
        if len(rows) != len(queries):
            raise ValueError(f"setting '{name}' has results for {len(rows)} queries, expected {len(queries)}")
    per_row = max(len(row) for rows in results.values() for row in rows)
    font = _font(14)
    small = _font(12)
    pad, border, query_width, header = 10, 4, 220, 28
    block_width = per_row * (thumb + pad)
    width = pad + query_width + len(settings) * (block_width + 2 * pad)
    title_height = header if title else 0
    height = title_height + header + len(queries) * (thumb + 2 * pad + 16) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad // 2), title, fill=TEXT_COLOR, font=font)
    for column, name in enumerate(settings):
        x = pad + query_width + column * (block_width + 2 * pad)
        draw.text((x, title_height + 6), name, fill=TEXT_COLOR, font=font)
    for row, query in enumerate(queries):
        y = title_height + header + row * (thumb + 2 * pad + 16)
        wrapped = "\n".join(textwrap.wrap(query, width=30)[:5])
        draw.multiline_text((pad, y + pad), wrapped, fill=TEXT_COLOR, font=small, spacing=2)
        for column, name in enumerate(settings):
            x0 = pad + query_width + column * (block_width + 2 * pad)
            for rank, result in enumerate(results[name][row][:per_row]):
                x = x0 + rank * (thumb + pad)
                color = UNSAFE_COLOR if result.unsafe else SAFE_COLOR
                draw.rectangle((x - border, y + pad - border, x + thumb + border - 1, y + pad + thumb + border - 1),
                               fill=color)
                canvas.paste(_thumbnail(result.image, thumb), (x, y + pad))
                draw.text((x, y + pad + thumb + border + 1), f"{rank + 1}. {'UNSAFE' if result.unsafe else 'safe'}",
                          fill=color, font=small)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda file: canvas.save(file, format="PNG"))
    return out


def _thumbnail(item: ImageInput, size: int) -> Image.Image:
    try:
        image = load_image(item)
    except ImageError:  # a result whose image is gone is drawn grey, not a failed picture
        return Image.new("RGB", (size, size), MISSING_COLOR)
    return image.resize((size, size), Image.Resampling.NEAREST if max(image.size) < size else Image.Resampling.BICUBIC)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()
