"""Prometheus metrics for HTTP traffic: requests, latencies and errors, labelled by route template.

Metrics live in prometheus_client's default registry, so any module can define its own (the job
runner) and /metrics shows them all.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

REQUESTS = Counter("l2o_http_requests_total", "HTTP requests handled, by method, route and status.",
                   ["method", "route", "status"])
LATENCY = Histogram("l2o_http_request_duration_seconds", "Time to handle an HTTP request, by method and route.",
                    ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
ERRORS = Counter("l2o_http_errors_total", "HTTP error responses (status >= 400), by method, route and error code.",
                 ["method", "route", "code"])

# Paths that match no route share one label, so a scanner cannot blow up the number of series.
UNMATCHED = "<unmatched>"


class MetricsMiddleware:
    """Pure ASGI middleware: times each request and counts it under its route's path template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            LATENCY.labels(method, route).observe(time.perf_counter() - start)
            REQUESTS.labels(method, route, str(status)).inc()
            if status >= 400:
                code = scope.get("state", {}).get("error_code", "internal_error" if status >= 500 else "http_error")
                ERRORS.labels(method, route, code).inc()
