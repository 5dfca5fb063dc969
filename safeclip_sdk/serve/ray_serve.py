"""``safeclip serve --ray``: the app of :func:`~safeclip_sdk.serve.app.create_app` as a Ray Serve
deployment. Each replica builds the whole app in its own process (its model, its batchers, its
store connection), so the routes, limits, keys and JSON errors are the single-process server's;
Serve's HTTP proxy spreads requests over the replicas and its autoscaler adds or removes them.

Importing this module imports Ray; the rest of safeclip imports it only for ``--ray``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from ..errors import SafeclipError

try:
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
except ImportError as error:  # pragma: no cover - depends on the installation
    raise SafeclipError("safeclip serve --ray needs Ray Serve: pip install 'safeclip[ray-serve]'") from error

from ..runtime.ray_pool import connect, unwrap
from .app import create_app
from .auth import api_keys_from_environment
from .server import LOOPBACK, check_store_for_processes, warn_if_reachable
from .settings import ServeSettings

logger = logging.getLogger(__name__)

APP_NAME = "safeclip"
#: requests in flight per replica the autoscaler aims at: batches only form where several wait
TARGET_ONGOING_REQUESTS = 16


@serve.ingress()
class SafeclipReplica:
    """One replica: the app built inside the replica's own process, after Ray placed it (so
    ``device="auto"`` sees only the GPUs Ray gave it)."""

    def __init__(self, arguments: dict):
        self._arguments = arguments

    def __serve_build_asgi_app__(self):
        return create_app(**self._arguments)


def deploy_ray(model: str | os.PathLike, *, store=None, collection: str | None = None,
               settings: ServeSettings | None = None, replicas: int = 1, min_replicas: int | None = None,
               max_replicas: int | None = None, target_ongoing_requests: float = TARGET_ONGOING_REQUESTS,
               gpus_per_replica: float = 0, cpus_per_replica: float = 1, ray_address: str | None = None,
               host: str = LOOPBACK, port: int = 8000, backend: str = "auto", device: str = "auto",
               num_threads: int | None = None, base_model: str | os.PathLike | None = None,
               name: str = APP_NAME) -> str:
    """Deploy ``model`` on Ray Serve, wait until its replicas answer, and return the base URL.

    The deployment keeps running after this returns; :func:`serve_ray` blocks and removes it on
    Ctrl-C, or remove it yourself with ``ray.serve.delete(name)`` (``ray.serve.shutdown()`` stops
    Serve itself).

    Args:
        model: a model folder or an ONNX export, at this path on every node (a local path is
            made absolute first).
        store, collection: the collection ``/v1/search`` searches, as a target every replica
            opens itself: a Qdrant server URL or a PostgreSQL DSN (a local Qdrant folder only with
            one replica at most).
        replicas: a fixed number of replicas, unless ``max_replicas`` is given.
        min_replicas, max_replicas, target_ongoing_requests: autoscaling: Serve keeps between
            ``min_replicas`` (default 1; 0 lets it scale to none while idle) and ``max_replicas``
            replicas, aiming at ``target_ongoing_requests`` requests in flight per replica.
        gpus_per_replica, cpus_per_replica: what Ray reserves for each replica; the cluster must
            have them for the replicas started first, or this fails at once with one line.
        ray_address: the Ray cluster to join (default: ``RAY_ADDRESS``, or a local Ray started here).
        host, port: where Serve's HTTP proxy listens (loopback unless told otherwise).
        settings, backend, device, num_threads, base_model: as for :func:`~safeclip_sdk.serve.app.create_app`,
            in every replica. API keys come from this process's ``SAFECLIP_API_KEYS``.
    """
    settings = settings or ServeSettings()
    if max_replicas is None:
        if min_replicas is not None:
            raise SafeclipError("min_replicas needs max_replicas (autoscaling)")
        if replicas < 1:
            raise SafeclipError(f"replicas must be at least 1, got {replicas}")
        started, most = replicas, replicas
    else:
        min_replicas = 1 if min_replicas is None else min_replicas
        if not 0 <= min_replicas <= max_replicas or max_replicas < 1:
            raise SafeclipError(f"autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                                f"got {min_replicas} and {max_replicas}")
        if target_ongoing_requests <= 0:
            raise SafeclipError(f"target_ongoing_requests must be positive, got {target_ongoing_requests}")
        started, most = max(min_replicas, 1), max_replicas
    if (store is None) != (collection is None):
        raise SafeclipError("give both store and collection, or neither")
    check_store_for_processes(store, most, "replicas")
    connect(ray_address, started, gpus_per_replica, progress=False, cpus_per_worker=cpus_per_replica, unit="replica")

    arguments = {"model": _here_if_local(model), "store": None if store is None else _here_if_local(store),
                 "collection": collection, "settings": settings, "backend": backend, "device": device,
                 "num_threads": num_threads, "api_keys": api_keys_from_environment(),
                 "base_model": None if base_model is None else _here_if_local(base_model)}
    options = {"ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
               # the app's own bounded queue answers 429; Serve's per-replica cap must not queue before it
               "max_ongoing_requests": max(settings.max_queue, int(target_ongoing_requests) + 1),
               "max_constructor_retry_count": 1}
    if max_replicas is None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "initial_replicas": started,
                                         "target_ongoing_requests": target_ongoing_requests}
    deployment = serve.deployment(SafeclipReplica, name="safeclip").options(**options)
    serve.start(http_options={"host": host, "port": port})
    proxy = _get_global_client().http_config  # Serve started earlier on this cluster keeps its own
    if (proxy.host, proxy.port) != (host, port):
        logger.warning("Ray Serve already runs on this cluster with its HTTP proxy on %s:%s: the service answers "
                       "there, not on %s:%s", proxy.host, proxy.port, host, port)
    try:
        serve.run(deployment.bind(arguments), name=name, route_prefix="/")
    except Exception as error:  # noqa: BLE001 - whatever stopped the deployment, said in one line
        raise _start_failure(name, error) from None
    warn_if_reachable(proxy.host)
    return f"http://{proxy.host}:{proxy.port}"


def serve_ray(model: str | os.PathLike, *, store=None, collection: str | None = None,
              settings: ServeSettings | None = None, replicas: int = 1, min_replicas: int | None = None,
              max_replicas: int | None = None, target_ongoing_requests: float = TARGET_ONGOING_REQUESTS,
              gpus_per_replica: float = 0, cpus_per_replica: float = 1, ray_address: str | None = None,
              host: str = LOOPBACK, port: int = 8000, backend: str = "auto", device: str = "auto",
              num_threads: int | None = None, base_model: str | os.PathLike | None = None,
              name: str = APP_NAME) -> None:
    """:func:`deploy_ray` (same arguments), then answer requests until Ctrl-C or SIGTERM, then remove
    the deployment (and stop Serve and Ray when they were started here)."""
    options = {"store": store, "collection": collection, "settings": settings, "replicas": replicas,
               "min_replicas": min_replicas, "max_replicas": max_replicas,
               "target_ongoing_requests": target_ongoing_requests, "gpus_per_replica": gpus_per_replica,
               "cpus_per_replica": cpus_per_replica, "ray_address": ray_address, "host": host, "port": port,
               "backend": backend, "device": device, "num_threads": num_threads, "base_model": base_model,
               "name": name}
    started_here = not ray.is_initialized() and not (ray_address or os.environ.get("RAY_ADDRESS"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    remove = True
    try:
        url = deploy_ray(model, **options)
        signal.signal(signal.SIGTERM, _interrupt)  # again: a Ray started by deploy_ray put its own (it aborts)
        logger.info("serving on Ray Serve at %s (Ctrl-C stops)", url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # also one that came while the replicas started: they are removed too
        pass
    except BaseException:
        remove = False  # deploy_ray failed, and removed what it had started
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        serving = ray.is_initialized() and _get_global_client(raise_if_no_controller_running=False) is not None
        if remove and serving:
            serve.delete(name)
        if started_here and ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def _start_failure(name: str, error: Exception) -> SafeclipError:
    """Why the replicas did not start, as one line (a safeclip error raised in a replica is only in
    the deployment's status, as the text of its traceback); the failed application is removed."""
    application = serve.status().applications.get(name)
    details = [deployment.message for deployment in application.deployments.values()] if application else []
    serve.delete(name)
    reason = unwrap(RuntimeError("\n".join([str(error), *details])))
    if isinstance(reason, SafeclipError):
        return SafeclipError(f"a Ray Serve replica could not start: {reason}")
    last_line = next((line for line in reversed(str(error).splitlines()) if line.strip()), type(error).__name__)
    return SafeclipError(f"the Ray Serve deployment did not start: {last_line.strip()}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _here_if_local(target: str | os.PathLike) -> str:
    """A path that exists here, made absolute (a replica's working folder is Ray's); anything else as given."""
    path = Path(os.fspath(target)).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(target)
