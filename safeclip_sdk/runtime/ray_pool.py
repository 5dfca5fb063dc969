"""What the Ray engines of ``reindex`` and ``embed`` share: joining (or starting) a Ray cluster,
the fail-fast resource check, the arguments of a Ray Data actor pool whose actors each hold one
Encoder, and a pool fed straight from this process for work whose input only this process can read.

Importing this module imports Ray; the rest of safeclip imports it only for ``engine="ray"``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import SafeclipError

try:
    import ray
    import ray.data
    import ray.exceptions
    from ray.util import ActorPool
except ImportError as error:  # pragma: no cover - depends on the installation
    raise SafeclipError("engine 'ray' needs Ray Data: pip install 'safeclip[ray]'") from error

ENGINES = ("local", "ray")


def check_engine(engine: str, workers: int, gpus_per_worker: float, cpus_per_worker: float = 1) -> None:
    """Refuse an unknown engine or a pool that cannot exist, before anything is written."""
    if engine not in ENGINES:
        raise SafeclipError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    if workers < 1:
        raise SafeclipError(f"workers must be at least 1, got {workers}")
    if gpus_per_worker < 0:
        raise SafeclipError(f"gpus per worker must be 0 or more, got {gpus_per_worker}")
    if cpus_per_worker <= 0:
        raise SafeclipError(f"cpus per worker must be more than 0, got {cpus_per_worker}")


def connect(address: str | None, workers: int, gpus_per_worker: float, progress: bool = True,
            cpus_per_worker: float = 1, unit: str = "worker") -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``, or start a local one) and check that it
    has what a pool of ``workers`` actors with ``gpus_per_worker`` GPUs and ``cpus_per_worker`` CPUs
    each needs; ``unit`` names the actors in errors and their options (``worker``: ``--workers``,
    ``--gpus-per-worker``; ``replica``: ``--replicas``, ``--gpus-per-replica``).

    Ray would otherwise keep an actor that asks for a missing GPU pending forever.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.verbose_stats_logs = False
    resources = ray.cluster_resources()
    where = "this Ray cluster" if address else "the local Ray instance"
    needed_gpus = workers * gpus_per_worker
    if needed_gpus > resources.get("GPU", 0):
        raise SafeclipError(f"{workers} {unit}(s) with {gpus_per_worker:g} GPU(s) each need {needed_gpus:g} GPU(s), "
                            f"but {where} has {resources.get('GPU', 0):g}: lower --{unit}s or --gpus-per-{unit}, "
                            f"or pass --gpus-per-{unit} 0 to run on CPUs")
    if workers * cpus_per_worker > resources.get("CPU", 0):
        raise SafeclipError(f"{workers} {unit}(s) with {cpus_per_worker:g} CPU(s) each need "
                            f"{workers * cpus_per_worker:g} CPU(s), but {where} has {resources.get('CPU', 0):g}: "
                            f"lower --{unit}s or --cpus-per-{unit}")


def pool_options(workers: int, gpus_per_worker: float, batch_size: int, cpus_per_worker: float = 1) -> dict[str, Any]:
    """``map_batches`` arguments of an actor pool: a fixed size, an explicit batch size, the CPUs and
    GPUs of each actor (Ray gives an actor as many torch threads as it has whole CPUs)."""
    options: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=workers), "batch_size": batch_size,
                               "batch_format": "numpy", "num_cpus": cpus_per_worker}
    if gpus_per_worker:
        options["num_gpus"] = gpus_per_worker
    return options


def streamed(actor_class: type, args: tuple, items: Iterable[tuple[Any, Any]], *, workers: int,
             gpus_per_worker: float, cpus_per_worker: float = 1,
             in_flight_per_worker: int = 2) -> Iterator[tuple[Any, Any]]:
    """``(item, actor_class(*args)(value))`` for each ``(item, value)`` of ``items``, in their order,
    computed by ONE pool of ``workers`` actors that lives for the whole iteration.

    ``items`` is consumed lazily: at most ``in_flight_per_worker`` values per actor wait or run at a
    time, so this process reads the next input and handles the last result while the actors work.
    """
    options: dict[str, Any] = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
    actors = [ray.remote(actor_class).options(**options).remote(*args) for _ in range(workers)]
    pool, waiting = ActorPool(actors), deque()
    try:
        for item, value in items:
            pool.submit(lambda actor, argument: actor.__call__.remote(argument), value)
            waiting.append(item)
            if len(waiting) >= workers * in_flight_per_worker:
                yield waiting.popleft(), pool.get_next()
        while waiting:
            yield waiting.popleft(), pool.get_next()
    finally:
        for actor in actors:
            ray.kill(actor)


class EncoderActor:
    """Base of the pool's actors: holds one Encoder (``device="auto"`` sees only the GPUs Ray gave
    the actor). A model that does not load is reported by the first batch as safeclip's one-line
    error: an actor that dies in its constructor leaves only a traceback."""

    def __init__(self, model: str, backend: str = "auto", **options):
        from .encoder import Encoder

        self.encoder, self.load_error = None, None
        try:
            self.encoder = Encoder.load(model, backend, **options)
        except SafeclipError as error:
            self.load_error = str(error)

    def check_loaded(self) -> None:
        if self.load_error is not None:
            raise SafeclipError(f"a Ray worker could not load the model: {self.load_error}")


def unwrap(error: BaseException) -> BaseException:
    """The safeclip error behind a failed Ray task, as one line (the CLI prints it without a
    traceback); any other error as it is."""
    cause = error
    while cause is not None:
        if isinstance(cause, SafeclipError) and not isinstance(cause, ray.exceptions.RayError):
            return cause
        # a remote error often arrives only as the text of its traceback
        found = _REMOTE_ERROR.findall(str(cause))
        if found:
            return SafeclipError(found[-1])
        cause = getattr(cause, "cause", None) or cause.__cause__
    return error


_REMOTE_ERROR = re.compile(r"safeclip_sdk\.errors\.\w+: (.+)")
