"""What the routes call: the loaded model behind dynamic batchers (embeddings and moderations of
texts and of images) and the safe search of the configured collection, all run on one inference
thread, every queue bounded."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ImageError, SafeclipError
from ..index.contract import BASE, QUERY_SIDE
from ..index.search import SafeSearch, physical_collection
from ..integrations import open_store
from ..runtime.classify import moderate
from ..runtime.encoder import Encoder, ImageFailure
from .batching import DeadlineExceeded, DynamicBatcher, QueueFull
from .errors import ApiError
from .metrics import ServeMetrics
from .schemas import IMAGE, TEXT
from .settings import ServeSettings

#: the batchers' names (the ``modality`` label of the batch-size and queue metrics)
MODERATION = {TEXT: "moderation-text", IMAGE: "moderation-image"}
SEARCH = "search"


class ModelService:
    """One loaded model (and optionally one collection) served to concurrent requests."""

    def __init__(self, encoder: Encoder, settings: ServeSettings, metrics: ServeMetrics, *,
                 store=None, collection: str | None = None, base_encoder: Encoder | None = None):
        self.encoder = encoder
        self.base_encoder = base_encoder
        self.settings = settings
        self.metrics = metrics
        self.collection = collection
        self._store_target = store
        self.store = None
        self._store_lock = threading.Lock()
        self._searchers: dict[tuple, SafeSearch] = {}
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="safeclip-inference")
        batching = {"executor": self._inference, "max_batch_size": settings.max_batch_size,
                    "max_wait_s": settings.max_wait_ms / 1000, "max_queue": settings.max_queue, "metrics": metrics}
        self._batchers = {TEXT: DynamicBatcher(TEXT, self._embed_texts, **batching),
                          IMAGE: DynamicBatcher(IMAGE, self._embed_images, **batching)}
        if self.moderates:
            self._batchers[MODERATION[TEXT]] = DynamicBatcher(
                MODERATION[TEXT], lambda texts: moderate(self.encoder, texts=texts), **batching)
            self._batchers[MODERATION[IMAGE]] = DynamicBatcher(
                MODERATION[IMAGE], lambda images: moderate(self.encoder, images=images), **batching)
        self._searches_waiting = 0
        if store is not None:
            self.store = open_store(store)
            try:
                physical_collection(self.store, collection)  # a wrong name fails before the server starts
            except Exception:
                self._close_store()
                raise

    async def start(self) -> None:
        for batcher in self._batchers.values():
            batcher.start()

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()
        self._inference.shutdown(wait=True)
        self._close_store()

    def _close_store(self) -> None:
        """Close the store this service opened (one it was given stays open for its owner)."""
        if self.store is not None and self.store is not self._store_target:
            self.store.close()

    # --- embeddings, batched ---

    async def embed(self, modality: str, items: list[Any]) -> list[Any]:
        """Per input: ``(vector, tokens)`` for texts, a vector or an ImageFailure for images."""
        return await self._submit(modality, items)

    async def _submit(self, batcher: str, items: list[Any]) -> list[Any]:
        try:
            return await self._batchers[batcher].submit(items, self.settings.request_timeout_s)
        except QueueFull:
            raise self._busy(batcher) from None
        except DeadlineExceeded:
            raise _deadline_error(self.settings) from None
        except ImageError as error:
            raise ApiError(422, str(error), param="input") from None
        except SafeclipError as error:
            raise ApiError(400, str(error)) from None

    def _busy(self, queue: str) -> ApiError:
        self.metrics.rejected.labels(queue).inc()
        return ApiError(429, "the server is busy: too many requests waiting, retry later", "rate_limit_error",
                        headers={"Retry-After": str(self.settings.retry_after_s)})

    def _embed_texts(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        vectors = self.encoder.encode_text(texts)
        tokens = np.count_nonzero(np.asarray(self.encoder.tokenizer(texts, context_length=self.encoder.context_length)),
                                  axis=1)
        return [(vectors[row], int(tokens[row])) for row in range(len(texts))]

    def _embed_images(self, images: list[Any]) -> list[np.ndarray | ImageFailure]:
        result = self.encoder.encode_image_batch(images)
        outcomes: list[np.ndarray | ImageFailure | None] = [None] * len(images)
        for failure in result.failures:
            outcomes[failure.index] = failure
        for row, index in enumerate(result.indices):
            outcomes[index] = result.embeddings[row]
        return outcomes

    # --- moderation (batched) and search (one query per call, a bounded number waiting) ---

    @property
    def moderates(self) -> bool:
        return self.encoder.category_classifier is not None or self.encoder.inference.classifies

    async def moderate(self, parts: list[tuple[str, Any]]) -> list[Any]:
        """One Moderation per ``(modality, value)``, in order."""
        by_modality = {modality: [value for kind, value in parts if kind == modality] for modality in (TEXT, IMAGE)}
        present = [modality for modality, values in by_modality.items() if values]
        answers = await asyncio.gather(*(self._submit(MODERATION[modality], by_modality[modality])
                                         for modality in present))
        in_order = {modality: iter(answer) for modality, answer in zip(present, answers)}
        return [next(in_order[modality]) for modality, _ in parts]

    async def search(self, query, *, limit: int, mode: str | None, vector: str | None, max_score,
                     exclude_categories: list[str], traversal: bool) -> tuple[SafeSearch, Any]:
        def run():
            with self._store_lock:
                searcher = self._searcher(mode, vector, traversal)
                return searcher, searcher.search(query, limit=limit, max_score=max_score,
                                                 exclude_categories=exclude_categories)

        if self._searches_waiting >= self.settings.max_queue:
            raise self._busy(SEARCH)
        self._searches_waiting += 1
        self.metrics.queue_depth.labels(SEARCH).set(self._searches_waiting)
        try:
            return await self._on_inference_thread(run)
        finally:
            self._searches_waiting -= 1
            self.metrics.queue_depth.labels(SEARCH).set(self._searches_waiting)

    def _searcher(self, mode: str | None, vector: str | None, traversal: bool) -> SafeSearch:
        key = (mode, vector, traversal)
        if key not in self._searchers:
            if mode == BASE:  # the collection as it answered before: the base model's query, original vectors
                if self.base_encoder is None:
                    raise SafeclipError(f"mode '{BASE}' needs the model the original vectors were embedded with: "
                                        f"start the server with --base-model")
                self._searchers[key] = SafeSearch(self.store, self.collection, self.base_encoder, mode=QUERY_SIDE,
                                                  vector=vector, traversal=False)
            else:
                self._searchers[key] = SafeSearch(self.store, self.collection, self.encoder, mode=mode,
                                                  vector=vector, traversal=traversal)
        return self._searchers[key]

    async def _on_inference_thread(self, call):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._inference, call),
                                          self.settings.request_timeout_s)
        except TimeoutError:
            raise _deadline_error(self.settings) from None
        except ImageError as error:
            raise ApiError(422, str(error), param="input") from None
        except SafeclipError as error:
            raise ApiError(400, str(error)) from None

    # --- readiness ---

    async def store_problem(self) -> str | None:
        """Why the configured collection cannot be searched now, or None (also when there is none)."""
        if self.store is None:
            return None

        def check():
            with self._store_lock:
                physical_collection(self.store, self.collection)

        try:
            await asyncio.get_running_loop().run_in_executor(None, check)
        except Exception as error:  # any failure of the store means not ready, said in the answer
            return f"the collection '{self.collection}' cannot be reached: {type(error).__name__}"
        return None


def _deadline_error(settings: ServeSettings) -> ApiError:
    return ApiError(503, f"no answer within the request deadline ({settings.request_timeout_s:g} s)",
                    "timeout_error")
