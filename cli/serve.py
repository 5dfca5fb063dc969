"""``safeclip serve``: a thin wrapper over :func:`safeclip_sdk.serve.serve`."""

from __future__ import annotations

from pathlib import Path

import click

from safeclip_sdk.cli.stores import pgvector_option, qdrant_option, store_target


@click.command("serve")
@click.argument("model")
@qdrant_option()
@pgvector_option()
@click.option("--collection", default=None, help="The collection or alias /v1/search searches (with a store).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 makes the service reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--backend", default="auto", show_default=True, help="torch, onnx, tensorrt or auto.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--num-threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads (default: onnxruntime's choice, all cores).")
@click.option("--model-name", default=None, help="The name clients pass as `model`. Default: MODEL's folder name.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most inputs one model call embeds (1: no batching).")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="How long the first request of a batch waits for more (0: a batch is what queued while the "
                   "model was busy).")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests waiting per modality; beyond, 429 with Retry-After.")
@click.option("--request-timeout", type=click.FloatRange(min=0.001), default=30.0, show_default=True,
              help="Seconds before a request is answered 503.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=16 * 2**20, show_default=True)
@click.option("--max-inputs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most inputs per request.")
@click.option("--max-text-chars", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=4096 * 4096, show_default=True)
@click.option("--image-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Image inputs may also be paths under this folder (never outside it). Default: data URLs only.")
@click.option("--allow-image-urls", is_flag=True,
              help="Image inputs may also be http(s) URLs the server fetches (off: the server could be pointed "
                   "at hosts only it can reach; prefer --image-url-host).")
@click.option("--image-url-host", "image_url_hosts", multiple=True,
              help="With --allow-image-urls: a host the server fetches from (repeat it; default: any host).")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=20 * 2**20, show_default=True,
              help="Largest image fetched from a URL.")
@click.option("--image-url-timeout", type=click.FloatRange(min=0.001), default=5.0, show_default=True,
              help="Seconds a URL fetch may take in all.")
@click.option("--base-model", default=None,
              help="The model the collection's original vectors were embedded with, for /v1/search mode 'base' and "
                   "the search page's base column. Default: the base MODEL's folder records.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="uvicorn processes on this machine, each loading its own model (a store must then be a server "
                   "or PostgreSQL: a local Qdrant folder is opened by one process only).")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run as a Ray Serve deployment (--host/--port are then Serve's HTTP proxy).")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: a fixed number of replicas.")
@click.option("--min-replicas", type=click.IntRange(min=0), default=None,
              help="With --ray --max-replicas: fewest replicas the autoscaler keeps (default 1; 0: none while idle).")
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="With --ray: autoscale up to this many replicas instead of a fixed --replicas.")
@click.option("--target-ongoing-requests", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --max-replicas: requests in flight per replica the autoscaler aims at (default 16).")
@click.option("--gpus-per-replica", type=click.FloatRange(min=0), default=0, show_default=True,
              help="With --ray: GPUs Ray reserves for each replica (fractions share a GPU).")
@click.option("--cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
              help="With --ray: CPUs Ray reserves for each replica.")
@click.option("--ray-address", default=None,
              help="With --ray: the Ray cluster to join (default: RAY_ADDRESS, or a local Ray started here).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def command(model: str, qdrant: str | None, pgvector: str | None, collection: str | None, host: str, port: int,
            backend: str, device: str, num_threads: int | None, model_name: str | None, max_batch_size: int, max_wait_ms: float,
            max_queue: int, request_timeout: float, max_body_bytes: int, max_inputs: int, max_text_chars: int,
            max_image_pixels: int, image_root: Path | None, allow_image_urls: bool, image_url_hosts: tuple[str, ...],
            max_image_bytes: int, image_url_timeout: float, base_model: str | None, workers: int, use_ray: bool, replicas: int,
            min_replicas: int | None, max_replicas: int | None, target_ongoing_requests: float | None,
            gpus_per_replica: float, cpus_per_replica: float, ray_address: str | None, log_level: str) -> None:
    """Serve MODEL (a model folder or an ONNX export) over HTTP: OpenAI-shaped /v1/embeddings and
    /v1/moderations, /v1/search over --collection, /healthz, /readyz, /metrics. API keys, if any,
    come from SAFECLIP_API_KEYS (comma-separated). See docs/serving.md."""
    from safeclip_sdk.serve import ServeSettings, serve

    _check_scale_out(click.get_current_context(), use_ray)
    store = None
    if qdrant is not None or pgvector is not None or collection is not None:
        store = store_target(qdrant, pgvector)
        if collection is None:
            raise click.UsageError("a store needs --collection: the collection /v1/search searches")
    settings = ServeSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             request_timeout_s=request_timeout, max_body_bytes=max_body_bytes, max_inputs=max_inputs,
                             max_text_chars=max_text_chars, max_image_pixels=max_image_pixels, image_root=image_root,
                             image_urls=allow_image_urls, image_url_hosts=image_url_hosts,
                             max_image_bytes=max_image_bytes, image_url_timeout_s=image_url_timeout,
                             model_name=model_name)
    if not use_ray:
        serve(model, store=store, collection=collection, host=host, port=port, settings=settings, backend=backend,
              device=device, num_threads=num_threads, log_level=log_level, workers=workers, base_model=base_model)
        return
    from safeclip_sdk.serve.ray_serve import TARGET_ONGOING_REQUESTS, serve_ray

    serve_ray(model, store=store, collection=collection, settings=settings, replicas=replicas,
              min_replicas=min_replicas, max_replicas=max_replicas,
              target_ongoing_requests=target_ongoing_requests or TARGET_ONGOING_REQUESTS,
              gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica, ray_address=ray_address,
              host=host, port=port, backend=backend, device=device, num_threads=num_threads, base_model=base_model)


RAY_ONLY = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "gpus_per_replica",
            "cpus_per_replica", "ray_address")


def _check_scale_out(context: click.Context, use_ray: bool) -> None:
    """Refuse options that do not go together, naming them."""
    given = {name for name in (*RAY_ONLY, "workers")
             if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    if use_ray and "workers" in given:
        raise click.UsageError("--workers runs uvicorn processes on this machine; with --ray use --replicas")
    if not use_ray and given & set(RAY_ONLY):
        raise click.UsageError(f"{flag(sorted(given & set(RAY_ONLY))[0])} needs --ray")
    if "replicas" in given and given & {"min_replicas", "max_replicas"}:
        raise click.UsageError("give --replicas (a fixed number) or --min-replicas/--max-replicas (autoscaling), "
                               "not both")
    for name in ("min_replicas", "target_ongoing_requests"):
        if name in given and "max_replicas" not in given:
            raise click.UsageError(f"{flag(name)} needs --max-replicas (autoscaling)")
