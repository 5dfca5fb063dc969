"""The demo's service stage: ``safeclip serve`` started for a few seconds on the demo's model and
live collection, one request per route answered over real HTTP on loopback, and the command that
starts it for good.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..serve import ServeSettings, create_app
from .world import UNSAFE_FIELD

MODEL_NAME = "safe-clip-demo"


@dataclass
class RouteAnswer:
    method: str
    route: str
    status: int
    summary: str


def run_service_stage(model: Path, store_dir: Path, collection: str, world_root: Path, query: str,
                      image: Path, echo) -> list[RouteAnswer]:
    """Serve ``model`` over ``collection`` and call each route once; the answers, in order."""
    import uvicorn

    settings = ServeSettings(model_name=MODEL_NAME, image_root=world_root)
    app = create_app(model, store=store_dir, collection=collection, settings=settings, device="cpu")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        answers = _call_each_route(f"http://127.0.0.1:{port}", query, image)
    finally:
        server.should_exit = True
        thread.join(30)
    echo(f"\nsafeclip serve, started for a few seconds on http://127.0.0.1:{port} (one request per route):\n")
    echo("| request | status | answer |")
    echo("|---|---|---|")
    for answer in answers:
        echo(f"| {answer.method} {answer.route} | {answer.status} | {answer.summary} |")
    echo(f"\nto keep it running: safeclip serve {model} --qdrant {store_dir} --collection {collection} "
         f"--image-root {world_root}   (docs/serving.md)\n")
    return answers


def _call_each_route(base_url: str, query: str, image: Path) -> list[RouteAnswer]:
    data_url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode("ascii")
    calls: list[tuple[str, str, dict | None, str]] = [
        ("GET", "/healthz", None, ""),
        ("GET", "/readyz", None, ""),
        ("POST", "/v1/embeddings", {"model": MODEL_NAME, "input": [query]}, f"text '{query}': "),
        ("POST", "/v1/embeddings", {"model": MODEL_NAME, "modality": "image", "input": [data_url]},
         f"image {image.name}: "),
        ("POST", "/v1/moderations", {"input": [query]}, ""),
        ("POST", "/v1/search", {"input": query, "k": 3}, f"'{query}', "),
        ("GET", "/metrics", None, ""),
    ]
    answers = []
    for method, route, body, what in calls:
        status, summary = _request(base_url + route, body)
        answers.append(RouteAnswer(method, route, status, what + summary))
    return answers


def _request(url: str, body: dict | None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    return status, _summary(url, text)


def _summary(url: str, text: str) -> str:
    if url.endswith("/metrics"):
        lines = [line for line in text.splitlines() if line.startswith("safeclip_requests_total")]
        return f"{len(lines)} request counters (Prometheus text)"
    answer: Any = json.loads(text)
    if "error" in answer:
        return "error: " + answer["error"]["message"]
    if url.endswith("/v1/embeddings"):
        return f"{len(answer['data'])} embedding of {len(answer['data'][0]['embedding'])} floats"
    if url.endswith("/v1/search"):
        hits = ", ".join(f"{Path(str(hit['payload'].get('image', hit['id']))).name}"
                         f"{' (unsafe)' if hit['payload'].get(UNSAFE_FIELD) else ''}" for hit in answer["results"])
        return f"mode {answer['mode']}, top 3: {hits}"
    return json.dumps(answer)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_started(server, thread: threading.Thread, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo service did not start")
        time.sleep(0.02)
