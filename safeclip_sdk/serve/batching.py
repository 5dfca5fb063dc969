"""Dynamic batching: concurrent requests share one model call.

Each request puts its inputs on a bounded queue as one job and awaits its answer. A loop on the
event loop takes the first waiting job, lets others join it for up to ``max_wait`` seconds or
until ``max_batch_size`` inputs, and runs the batch on the inference thread (never on the event
loop). A full queue refuses at once (:class:`QueueFull`); a request whose deadline passes gets
:class:`DeadlineExceeded` while its batch carries on, and a job whose request already gave up
is left out of the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from .metrics import ServeMetrics


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` jobs."""


class DeadlineExceeded(Exception):
    """No answer within the request's deadline."""


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future


class DynamicBatcher:
    """Batches the inputs of concurrent requests for ``run_batch`` (a list of inputs -> one
    outcome per input, in order), called on ``executor``.

    Start it with :meth:`start` inside the running event loop; :meth:`stop` ends it.
    """

    def __init__(self, name: str, run_batch: Callable[[list[Any]], list[Any]], executor: Executor, *,
                 max_batch_size: int, max_wait_s: float, max_queue: int, metrics: ServeMetrics):
        self.name = name
        self._run_batch = run_batch
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self._held: _Job | None = None  # taken from the queue but too large for the batch it came to
        self._metrics = metrics
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve_batches())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    async def submit(self, items: list[Any], timeout_s: float) -> list[Any]:
        """The outcomes of ``items``; QueueFull at once, DeadlineExceeded after ``timeout_s``."""
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(items, future))
        except asyncio.QueueFull:
            raise QueueFull from None
        self._metrics.queue_depth.labels(self.name).set(self.depth)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded from None

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._collect() if not job.future.done()]
            self._metrics.queue_depth.labels(self.name).set(self.depth)
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            self._metrics.batch_size.labels(self.name).observe(len(items))
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, items)
            except Exception as error:  # the batch failed as a whole: every request in it learns why
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(outcomes[start:start + len(job.items)])
                start += len(job.items)

    async def _collect(self) -> list[_Job]:
        """The next batch: the first waiting job and those that join within ``max_wait_s``."""
        loop = asyncio.get_running_loop()
        first, self._held = self._held or await self._queue.get(), None
        batch, size = [first], len(first.items)
        deadline = loop.time() + self._max_wait_s
        while size < self._max_batch_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if size + len(job.items) > self._max_batch_size:
                self._held = job
                break
            batch.append(job)
            size += len(job.items)
        return batch
