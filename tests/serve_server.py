"""A real uvicorn server on a free loopback port, in a thread, for the serve tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running(app, timeout_s: float = 30.0):
    """Start ``app`` under uvicorn and yield its base URL; stop it on exit."""
    port = free_port()
    # log_config=None: uvicorn's loggers propagate to the root logger, where caplog sees them
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="debug",
                                           access_log=True))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    base_url = f"http://127.0.0.1:{port}"
    try:
        httpx.get(f"{base_url}/healthz").raise_for_status()
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def wait_ready(base_url: str, process, timeout_s: float) -> None:
    """Wait until the server ``process`` answers ``/readyz`` with 200; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base_url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
