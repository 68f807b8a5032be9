"""Prometheus metrics for `GET /metrics`: requests, tokens, latency, queue depth, batch size.

Each app gets its own registry (two servers in one process, as in the tests, do not collide).
Requests are counted by an ASGI middleware when the response's last byte is sent, so a stream's
latency is its whole duration; the route label is the route's template (`/v1/conversations/{cid}`),
or "other" for unknown paths, to keep the label set small.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("parley_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram("parley_request_seconds", "Time to the last byte of a response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("parley_time_to_first_token_seconds", "Time from queueing to the first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("parley_generated_tokens", "Tokens generated and delivered", registry=r)
        self.disconnects = Counter("parley_client_disconnects", "Generations ended by the client leaving",
                                   registry=r)
        self.queue_depth = Gauge("parley_queue_depth", "Sequences waiting to join the batch", registry=r)
        self.batch_size = Gauge("parley_batch_size", "Sequences being decoded", registry=r)

    def watch(self, driver) -> None:
        self.queue_depth.set_function(lambda: driver.waiting)
        self.batch_size.set_function(lambda: driver.active)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count every HTTP response by route and status, with its duration."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
