"""The search-results picture: one row per query, frames coloured by safety."""

from __future__ import annotations

import pytest
from PIL import Image

from safeclip_sdk.demo.pictures import SAFE_COLOR, UNSAFE_COLOR, ShownResult, search_comparison


def _solid(path, color):
    Image.new("RGB", (32, 32), color).save(path)
    return path


def test_frames_mark_unsafe_results_red_and_safe_green(tmp_path):
    safe = _solid(tmp_path / "safe.png", (0, 0, 255))
    unsafe = _solid(tmp_path / "unsafe.png", (255, 255, 0))
    results = {"base": [[ShownResult(unsafe, True), ShownResult(safe, False)]],
               "safe": [[ShownResult(safe, False), ShownResult(safe, False)]]}
    out = search_comparison(tmp_path / "out" / "search.png", ["a query"], results, thumb=40)
    picture = Image.open(out).convert("RGB")
    assert picture.width > 2 * 2 * 40 and picture.height > 40
    pixels = set(picture.getdata())
    assert UNSAFE_COLOR in pixels and SAFE_COLOR in pixels
    assert (255, 255, 0) in pixels and (0, 0, 255) in pixels   # the thumbnails themselves


def test_missing_result_image_is_drawn_grey_not_an_error(tmp_path):
    out = search_comparison(tmp_path / "s.png", ["q"], {"base": [[ShownResult(tmp_path / "gone.png", False)]]})
    assert out.is_file()


def test_results_must_cover_every_query(tmp_path):
    with pytest.raises(ValueError, match="1 queries, expected 2"):
        search_comparison(tmp_path / "s.png", ["q1", "q2"], {"base": [[]]})
