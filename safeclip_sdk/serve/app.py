"""The FastAPI app: OpenAI-shaped embeddings and moderations, safe search, health and metrics.

>>> app = create_app("runs/safe-clip/model", store="qdrant-data", collection="photos")
>>> uvicorn.run(app, host="127.0.0.1", port=8000)   # or: safeclip serve MODEL ...
"""

from __future__ import annotations

import base64
import logging
import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from ..errors import SafeclipError
from ..index.audit import recorded_base_model
from ..index.contract import BASE
from ..runtime.encoder import Encoder, ImageFailure
from .auth import BearerKeyCheck, api_keys_from_environment
from .errors import ApiError, install_error_handlers
from .limits import BodySizeLimit, checked_image, checked_text, input_list
from .metrics import RequestMetrics, ServeMetrics
from .page import register_page
from .schemas import IMAGE, TEXT, EmbeddingRequest, ModerationRequest, SearchRequest
from .service import ModelService
from .settings import ServeSettings

logger = logging.getLogger(__name__)


def create_app(model: str | os.PathLike | Encoder, *, store=None, collection: str | None = None,
               settings: ServeSettings | None = None, backend: str = "auto", device: str = "auto",
               num_threads: int | None = None, api_keys: tuple[str, ...] | None = None,
               base_model: str | os.PathLike | Encoder | None = None) -> FastAPI:
    """The service for ``model`` (a model folder, an ONNX export or a loaded Encoder).

    Args:
        store, collection: the collection ``/v1/search`` searches (a Qdrant folder or URL, a
            PostgreSQL DSN, or an open store); without them ``/v1/search`` answers 404.
        settings: batching and limits (see :class:`ServeSettings`).
        backend, device, num_threads: as for ``Encoder.load`` (``num_threads``: onnxruntime's
            intra-op threads; fewer than the cores leaves CPU to the HTTP side on a small machine).
        api_keys: the accepted bearer tokens; default: ``SAFECLIP_API_KEYS`` (none: no key asked).
        base_model: the model the collection's original vectors were embedded with, for ``/v1/search``
            in mode ``base`` (what the collection answered before safeclip) and the page's base
            column; default: the base a model folder records, when it can be loaded.
    """
    settings = settings or ServeSettings()
    if (store is None) != (collection is None):
        raise SafeclipError("give both store and collection, or neither")
    if isinstance(model, Encoder):
        encoder = model
    else:
        encoder = Encoder.load(model, backend=backend, device=device, batch_size=settings.max_batch_size,
                               num_threads=num_threads, max_pixels=settings.max_image_pixels)
    model_name = settings.model_name or Path(encoder.source or "safeclip").name
    metrics = ServeMetrics()
    base_encoder = _base_encoder(model, base_model, backend, device, num_threads) if store is not None else None
    service = ModelService(encoder, settings, metrics, store=store, collection=collection, base_encoder=base_encoder)
    key_check = BearerKeyCheck(api_keys if api_keys is not None else api_keys_from_environment())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="safeclip", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics
    install_error_handlers(app)
    authorized = [Depends(key_check)]

    def checked_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise ApiError(404, f"model '{name}' is not served here (this server serves '{model_name}')",
                           "not_found_error", "model")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        problem = await service.store_problem()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "model": model_name, "reason": problem}, status_code=503)
        return {"status": "ready", "model": model_name, "collection": collection}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=authorized)
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "safeclip"}]}

    @app.post("/v1/embeddings", dependencies=authorized)
    async def embeddings(request: EmbeddingRequest):
        checked_model(request.model)
        if request.dimensions is not None and request.dimensions != encoder.embed_dim:
            raise ApiError(422, f"dimensions: this model embeds in {encoder.embed_dim} dimensions only",
                           param="dimensions")
        items = input_list(request.input, settings)
        if request.modality == TEXT:
            items = [checked_text(item, f"input[{i}]", settings) for i, item in enumerate(items)]
        else:
            items = await run_in_threadpool(
                lambda: [checked_image(item, f"input[{i}]", settings) for i, item in enumerate(items)])
        outcomes = await service.embed(request.modality, items)
        data, tokens = [], 0
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ImageFailure):
                raise ApiError(422, f"input[{index}]: {outcome.reason}", param=f"input[{index}]")
            vector, count = outcome if request.modality == TEXT else (outcome, 0)
            tokens += count
            data.append({"object": "embedding", "index": index,
                         "embedding": _encoded(vector, request.encoding_format)})
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/moderations", dependencies=authorized)
    async def moderations(request: ModerationRequest):
        checked_model(request.model)
        if not service.moderates:
            raise ApiError(400, f"model '{model_name}' has no classifier: its method does not classify and no "
                                f"category classifier was fitted (safeclip classify fit)", param="model")
        parts = input_list(request.input, settings)
        parts = await run_in_threadpool(lambda: [_moderation_part(part, i, settings) for i, part in enumerate(parts)])
        results = []
        for moderation in await service.moderate(parts):
            for category, flagged in moderation.categories.items():
                if flagged:
                    metrics.flagged.labels(category).inc()
            results.append({"flagged": moderation.flagged, "categories": moderation.categories,
                            "category_scores": moderation.category_scores,
                            "category_applied_input_types": {name: [moderation.modality]
                                                             for name in moderation.categories}})
        return {"id": f"modr-{uuid.uuid4().hex}", "model": model_name, "results": results}

    @app.post("/v1/search", dependencies=authorized)
    async def search(request: SearchRequest):
        checked_model(request.model)
        if service.store is None:
            raise ApiError(404, "this server has no collection to search (start it with a store and --collection)",
                           "not_found_error")
        if request.modality == TEXT:
            query: Any = checked_text(request.input, "input", settings)
        else:
            query = await run_in_threadpool(checked_image, request.input, "input", settings)
        searcher, results = await service.search(
            query, limit=request.k, mode=request.mode, vector=request.vector, max_score=request.max_score,
            exclude_categories=request.exclude_categories, traversal=request.traversal)
        metrics.searches.labels(str(searcher.traversal).lower()).inc()
        category_field = searcher.index.category_field if searcher.index else None
        mode = BASE if request.mode == BASE else results.mode
        return {"collection": results.collection, "mode": mode, "vector": results.vector,
                "results": [{**result.to_dict(),
                             "unsafe_score": result.payload.get(searcher.score_field) if searcher.score_field else None,
                             "category_scores": result.payload.get(category_field) if category_field else None}
                            for result in results]}

    register_page(app, service, authorized)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.routes)
    return app


def _base_encoder(model, base_model, backend: str, device: str, num_threads: int | None) -> Encoder | None:
    """The given base model loaded, or the one ``model``'s folder records (None when it records
    none or it cannot be loaded here: mode ``base`` then answers 400 saying so)."""
    if isinstance(base_model, Encoder):
        return base_model
    if base_model is not None:
        return Encoder.load(base_model, backend=backend, device=device, num_threads=num_threads)
    recorded = None if isinstance(model, Encoder) else recorded_base_model(model)
    if recorded is None:
        return None
    try:
        return Encoder.load(recorded, backend="torch", device=device, num_threads=num_threads)
    except SafeclipError as error:
        logger.warning("mode 'base' is off: the base model the folder records cannot be loaded (%s)", error)
        return None


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _moderation_part(part: Any, index: int, settings: ServeSettings) -> tuple[str, Any]:
    field = f"input[{index}]"
    if isinstance(part, dict) and part.get("type") == "image_url":
        url = part.get("image_url", {}).get("url") if isinstance(part.get("image_url"), dict) else None
        return IMAGE, checked_image(url, f"{field}.image_url.url", settings)
    if isinstance(part, dict) and part.get("type") == "text":
        return TEXT, checked_text(part.get("text"), f"{field}.text", settings)
    if isinstance(part, dict):
        raise ApiError(422, f"{field}: a content part has type 'text' or 'image_url'", param=field)
    return TEXT, checked_text(part, field, settings)
