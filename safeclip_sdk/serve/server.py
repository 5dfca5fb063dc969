"""``serve``: the app under uvicorn, bound to the loopback interface unless told otherwise."""

from __future__ import annotations

import logging
import os

from .app import create_app
from .auth import api_keys_from_environment
from .settings import ServeSettings

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def serve(model: str | os.PathLike, *, store=None, collection: str | None = None, host: str = LOOPBACK,
          port: int = 8000, settings: ServeSettings | None = None, backend: str = "auto", device: str = "auto",
          num_threads: int | None = None, log_level: str = "info") -> None:
    """Load ``model`` (and open ``store``'s ``collection``) and answer HTTP requests until stopped.

    The API keys come from ``SAFECLIP_API_KEYS`` (comma-separated); none: every client is served.
    See :func:`~safeclip_sdk.serve.app.create_app` for the arguments and docs/serving.md for the routes.
    """
    import uvicorn

    app = create_app(model, store=store, collection=collection, settings=settings, backend=backend, device=device,
                     num_threads=num_threads)
    if host != LOOPBACK:
        logger.warning("listening on %s: reachable from other machines%s", host,
                       "" if api_keys_from_environment() else " and no API key is set (SAFECLIP_API_KEYS)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)

