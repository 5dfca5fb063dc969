"""``serve``: the app under uvicorn, bound to the loopback interface unless told otherwise, in one
process or in ``workers`` processes that each load their own model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys

from ..errors import SafeclipError
from .app import create_app
from .auth import api_keys_from_environment
from .settings import ServeSettings

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

#: how the parent hands a worker process its arguments (uvicorn starts workers from an import string)
WORKER_ARGUMENTS_ENV = "SAFECLIP_SERVE_WORKER_ARGUMENTS"


def serve(model: str | os.PathLike, *, store=None, collection: str | None = None, host: str = LOOPBACK,
          port: int = 8000, settings: ServeSettings | None = None, backend: str = "auto", device: str = "auto",
          num_threads: int | None = None, log_level: str = "info", workers: int = 1,
          base_model: str | os.PathLike | None = None) -> None:
    """Load ``model`` (and open ``store``'s ``collection``) and answer HTTP requests until stopped.

    ``workers`` above 1 starts that many uvicorn processes on the one port, each loading its own
    model (and opening its own store connection: ``store`` must then be a target, not an open
    store, and not a local Qdrant folder, which only one process may open). The model and
    collection are checked once in this process first, so a wrong path fails with one line.

    The API keys come from ``SAFECLIP_API_KEYS`` (comma-separated); none: every client is served.
    See :func:`~safeclip_sdk.serve.app.create_app` for the arguments and docs/serving.md for the routes.
    """
    import uvicorn

    if workers < 1:
        raise SafeclipError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        app = create_app(model, store=store, collection=collection, settings=settings, backend=backend, device=device,
                         num_threads=num_threads, base_model=base_model)
        warn_if_reachable(host)
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    check_store_for_processes(store, workers, "workers")
    arguments = {"model": os.fspath(model), "store": None if store is None else os.fspath(store),
                 "collection": collection, "settings": _settings_fields(settings or ServeSettings()),
                 "backend": backend, "device": device, "num_threads": num_threads,
                 "base_model": None if base_model is None else os.fspath(base_model)}
    _close(app_from_arguments(arguments))
    warn_if_reachable(host)
    os.environ[WORKER_ARGUMENTS_ENV] = json.dumps(arguments)
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, host=host, port=port,
                log_level=log_level, server_header=False)


def app_from_environment():
    """The app of one ``--workers`` process, built from what :func:`serve` left in the environment."""
    try:
        return app_from_arguments(json.loads(os.environ[WORKER_ARGUMENTS_ENV]))
    except SafeclipError as error:
        # uvicorn stops every worker on this exit code instead of restarting this one forever
        from uvicorn.config import STARTUP_FAILURE

        logger.error("%s", error)
        sys.exit(STARTUP_FAILURE)


def app_from_arguments(arguments: dict):
    return create_app(arguments["model"], store=arguments["store"], collection=arguments["collection"],
                      settings=ServeSettings(**arguments["settings"]), backend=arguments["backend"], device=arguments["device"],
                      num_threads=arguments["num_threads"], base_model=arguments["base_model"])


def check_store_for_processes(store, processes: int, option: str) -> None:
    """Refuse a store several serving processes cannot each open: an open store object (it stays in
    this process) or a local Qdrant folder (one process per folder)."""
    if processes <= 1 or store is None:
        return
    if not isinstance(store, (str, os.PathLike)):
        raise SafeclipError(f"{option} {processes}: give the store as a folder, URL or DSN, not an open store: "
                            f"each process opens its own connection")
    target = os.fspath(store)
    if not target.startswith(("http://", "https://", "postgresql://", "postgres://")):
        raise SafeclipError(f"{option} {processes}: the local Qdrant folder {target} can be opened by one process "
                            f"only: serve the collection from a Qdrant server (http://host:6333) or PostgreSQL")


def warn_if_reachable(host: str) -> None:
    if host != LOOPBACK:
        logger.warning("listening on %s: reachable from other machines%s", host,
                       "" if api_keys_from_environment() else " and no API key is set (SAFECLIP_API_KEYS)")


def _settings_fields(settings: ServeSettings) -> dict:
    return {name: os.fspath(value) if isinstance(value, os.PathLike) else value
            for name, value in dataclasses.asdict(settings).items()}


def _close(app) -> None:
    """Release what a checked but unserved app holds (its inference thread, its store connection)."""
    asyncio.run(app.state.service.stop())
