"""The service's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match

#: the route label of a path no route matches (keeps the label set bounded)
UNMATCHED_ROUTE = "unmatched"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("safeclip_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("safeclip_request_seconds", "Time to answer a request, by route",
                                 ["route"], registry=self.registry)
        self.batch_size = Histogram("safeclip_batch_size", "Inputs per model call, by modality", ["modality"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("safeclip_queue_depth", "Requests waiting for a batch, by modality",
                                 ["modality"], registry=self.registry)
        self.rejected = Counter("safeclip_rejected", "Requests refused because the queue was full, by modality",
                                ["modality"], registry=self.registry)
        self.flagged = Counter("safeclip_flagged_items", "Moderated inputs flagged, by category", ["category"],
                               registry=self.registry)
        self.searches = Counter("safeclip_search_queries", "Search queries, by whether the model's query "
                                "transformation was applied", ["transformed"], registry=self.registry)


class RequestMetrics:
    """ASGI middleware counting every response (errors included) by route template and status."""

    def __init__(self, app, metrics: ServeMetrics, routes):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), UNMATCHED_ROUTE)
        status = 500
        started = time.perf_counter()

        async def recorded_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded_send)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
