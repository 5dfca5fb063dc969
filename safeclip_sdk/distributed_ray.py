"""What the Ray engines of ``reindex`` and ``embed`` share: joining (or starting) a Ray cluster,
the fail-fast resource check, and the arguments of an actor pool whose actors each hold one Encoder.

Importing this module imports Ray; the rest of safeclip imports it only for ``engine="ray"``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import SafeclipError

try:
    import ray
    import ray.data
except ImportError as error:  # pragma: no cover - depends on the installation
    raise SafeclipError("engine 'ray' needs Ray Data: pip install 'safeclip[ray]'") from error

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def check_engine(engine: str, workers: int, gpus_per_worker: float) -> None:
    """Refuse an unknown engine or a pool that cannot exist, before anything is written."""
    if engine not in ENGINES:
        raise SafeclipError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    if workers < 1:
        raise SafeclipError(f"workers must be at least 1, got {workers}")
    if gpus_per_worker < 0:
        raise SafeclipError(f"gpus per worker must be 0 or more, got {gpus_per_worker}")


def connect(address: str | None, workers: int, gpus_per_worker: float, progress: bool = True) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``, or start a local one) and check that it
    has what a pool of ``workers`` actors with ``gpus_per_worker`` GPUs each needs.

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
        raise SafeclipError(f"{workers} worker(s) with {gpus_per_worker:g} GPU(s) each need {needed_gpus:g} GPU(s), "
                            f"but {where} has {resources.get('GPU', 0):g}: lower --workers or --gpus-per-worker, "
                            f"or pass --gpus-per-worker 0 to embed on CPUs")
    if workers > resources.get("CPU", 0):
        raise SafeclipError(f"{workers} worker(s) need a CPU each, but {where} has {resources.get('CPU', 0):g}")


def pool_options(workers: int, gpus_per_worker: float, batch_size: int) -> dict[str, Any]:
    """``map_batches`` arguments of an actor pool: a fixed size, an explicit batch size, the GPUs."""
    options: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=workers), "batch_size": batch_size,
                               "batch_format": "numpy", "num_cpus": 1}
    if gpus_per_worker:
        options["num_gpus"] = gpus_per_worker
    return options


def load_encoder(model: str, backend: str = "auto", **options):
    """The Encoder an actor holds (``device="auto"`` sees only the GPUs Ray gave the actor)."""
    from .encoder import Encoder

    return Encoder.load(model, backend, **options)


def unwrap(error: BaseException) -> BaseException:
    """The safeclip error behind a failed Ray task (so the CLI prints its one line), else ``error``."""
    cause = error
    while cause is not None:
        if isinstance(cause, SafeclipError):
            return SafeclipError(str(cause).splitlines()[-1] if "\n" in str(cause) else str(cause))
        cause = getattr(cause, "cause", None) or cause.__cause__
    return error
