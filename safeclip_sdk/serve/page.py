"""The search page at ``/``: a query box and two deployments of the served collection side by side.

The page (``static/``: plain HTML, a small script, no build and no CDN) calls ``/v1/search`` once
per column and shows the results as tiles with their unsafe scores. Two routes serve it data:

- ``GET /page/deployments``: which searches the collection supports (the bodies the page posts to
  ``/v1/search``), the recommended one, the one to compare it with, and the recorded thresholds
  that flag a result as unsafe;
- ``GET /page/thumbnail?path=...``: a small JPEG of an image under the operator's image root
  (``--image-root``); a path resolving outside it (``..``, absolute, symlinks) gets 403, a missing
  file 404, and without an image root every path gets 404.

Both are behind the API keys when keys are set (the page asks for a key and keeps it in memory);
the page and its static files are not.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from ..data.images import load_image
from ..errors import ImageError
from ..index.contract import BASE, QUERY_SIDE, SAFE
from ..index.search import SafeSearch, SearchError
from .errors import ApiError
from .service import ModelService

STATIC = Path(__file__).parent / "static"
THUMBNAIL_SIDE = 256
#: what the page may load: its own files, its own API, thumbnails as blob URLs (fetched with the key)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATIC_TYPES = {"page.js": "text/javascript", "page.css": "text/css"}
QUERY_AS_TYPED = "query-as-typed"
SCORE_FILTER = "score-filter"


def register_page(app: FastAPI, service: ModelService, authorized: list) -> None:
    """Add ``/``, its static files, ``/page/deployments`` and ``/page/thumbnail`` to ``app``."""
    settings = service.settings
    index_html = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(index_html, headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC_TYPES:
            raise ApiError(404, f"no static file '{name}'", "not_found_error")
        return FileResponse(STATIC / name, media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)

    @app.get("/page/deployments", dependencies=authorized)
    async def deployments():
        if service.store is None:
            raise ApiError(404, "this server has no collection to search (start it with a store and --collection)",
                           "not_found_error")
        return await run_in_threadpool(_deployments, service)

    @app.get("/page/thumbnail", dependencies=authorized)
    async def thumbnail(path: str):
        if settings.image_root is None:
            raise ApiError(404, "this server has no image root (start it with --image-root)", "not_found_error",
                           "path")
        data = await run_in_threadpool(_thumbnail, path, settings.image_root, settings.max_image_pixels)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


def _deployments(service: ModelService) -> dict[str, Any]:
    """The searches the page can run on the service's collection, read from its index record."""
    encoder = service.encoder
    with service._store_lock:  # the service's store is used by one thread at a time
        searchers = {}
        for mode in (None, QUERY_SIDE, SAFE):
            try:
                searchers[mode] = SafeSearch(service.store, service.collection, encoder, mode=mode)
            except SearchError as error:
                searchers[mode] = str(error)
    default = searchers[None]
    if isinstance(default, str):
        raise ApiError(400, default)
    index = default.index
    threshold = index.threshold if index else None
    found: list[dict[str, Any]] = []  # least protected first: the page compares the first with the recommended
    if service.base_encoder is not None and isinstance(searchers[QUERY_SIDE], SafeSearch):
        found.append({"id": BASE, "title": "base model (the collection before safeclip)", "search": {"mode": BASE}})
    if isinstance(searchers[QUERY_SIDE], SafeSearch):
        if searchers[QUERY_SIDE].traversal:
            found.append({"id": QUERY_AS_TYPED, "title": "query-side, query as typed (no traversal)",
                          "search": {"mode": QUERY_SIDE, "traversal": False}})
        found.append({"id": QUERY_SIDE, "title": "query-side (safe model's query, original vectors)",
                      "search": {"mode": QUERY_SIDE}})
    if isinstance(searchers[SAFE], SafeSearch):
        found.append({"id": SAFE, "title": "safe vectors", "search": {"mode": SAFE}})
    if isinstance(searchers[QUERY_SIDE], SafeSearch) and default.score_field:
        # without a recorded threshold the page sends the one its user typed
        found.append({"id": SCORE_FILTER, "title": "query-side + score filter",
                      "search": {"mode": QUERY_SIDE, "max_score": "threshold"}})
    ids = [deployment["id"] for deployment in found]
    recommended = SCORE_FILTER if SCORE_FILTER in ids and threshold is not None else default.mode
    compare = next((name for name in ids if name != recommended), recommended)
    return {"collection": service.collection, "deployments": found, "recommended": recommended,
            "compare": compare, "unsafe_threshold": threshold,
            "category_thresholds": _category_thresholds(index)}


def _category_thresholds(index) -> dict[str, dict[str, Any]]:
    """``{payload key: {"category": name, "threshold": t}}`` of the per-category scores, if stored."""
    if index is None or not index.category_keys:
        return {}
    return {key: {"category": category, "threshold": index.category_thresholds[category]}
            for category, key in index.category_keys.items()}


def _thumbnail(path: str, root: Path, max_pixels: int) -> bytes:
    try:
        resolved = (root / path).resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        raise ApiError(404, "path: no such image under the server's image root", "not_found_error", "path") from None
    if not resolved.is_relative_to(root):
        raise ApiError(403, "path: the path is outside the server's image root", "permission_error", "path")
    if not resolved.is_file():
        raise ApiError(404, "path: no such image under the server's image root", "not_found_error", "path")
    try:
        image = load_image(resolved, max_pixels=max_pixels, label="path")
    except ImageError as error:
        raise ApiError(422, f"path: {error.reason}", param="path") from None
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
