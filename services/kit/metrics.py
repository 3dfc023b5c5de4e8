"""Prometheus metrics: one registry per app, RED metrics, build info, /metrics exposition."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as om_exposition
from starlette.requests import Request
from starlette.responses import Response

# `*_created` series double the exposition and no rule here reads them.
disable_created_metrics()

# Every SLO threshold (0.5 s for checkout; 0.1/0.25/1/2.5 for the latency alerts) is a bucket
# edge, and between 0.5 and 3 s, where the lab's faults land (latency 1.2 +- 0.2 s and
# 2 +- 0.3 s, 2 s hop timeouts), edges are at most 0.5 s apart: p99 of a 1.2 s fault reads
# 1.2-1.5 s instead of ~2.4 s from one wide 1-2.5 s bucket.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0
)  # fmt: skip


class Metrics:
    """The app's registry and the metrics every service has; services register their own on it."""

    def __init__(self, service: str, version: str, environment: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests served.", ["method", "route", "status"], registry=r
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration, by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("http_requests_in_flight", "Requests being served.", registry=r)
        self.build_info = Gauge(
            "triagelab_build_info",
            "Build of this service (always 1).",
            ["version", "environment"],
            registry=r,
        )
        self.client_requests = Counter(
            "http_client_requests",
            "Calls to other services.",
            ["peer", "method", "status"],
            registry=r,
        )
        self.client_duration = Histogram(
            "http_client_request_duration_seconds",
            "Duration of calls to other services (each attempt).",
            ["peer", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.client_retries = Counter(
            "http_client_retries", "Retried calls to other services.", ["peer"], registry=r
        )
        self.worker_restarts = Counter(
            "worker_restarts",
            "Background workers that raised (or returned) and were restarted.",
            ["worker"],
            registry=r,
        )
        # A worker's heartbeat: a loop that stalls, waits forever or fails every round stops
        # both, whatever it logs (or does not).
        self.worker_iterations = Counter(
            "worker_iterations",
            "Rounds of a background worker's loop that completed.",
            ["worker"],
            registry=r,
        )
        self.worker_last_success = Gauge(
            "worker_last_success_timestamp_seconds",
            "Unix time a background worker last completed a round.",
            ["worker"],
            registry=r,
        )
        self.service = service
        self.environment = environment
        self.set_version(version)
        # Label children are looked up once per label set, not on every request.
        self._req_children: dict[tuple[str, str, str], Counter] = {}
        self._dur_children: dict[tuple[str, str], Histogram] = {}

    def heartbeat(self, worker: str) -> Callable[[], None]:
        """What a worker calls after each round that completed (`Kit.add_worker` hands it)."""
        iterations = self.worker_iterations.labels(worker)
        last = self.worker_last_success.labels(worker)

        def beat() -> None:
            iterations.inc()
            last.set_to_current_time()

        return beat

    def set_version(self, version: str) -> None:
        """Expose exactly one build_info series (a "bad release" changes it at run time)."""
        self.build_info.clear()
        self.build_info.labels(version, self.environment).set(1)

    def request_counter(self, method: str, route: str, status: str) -> Counter:
        key = (method, route, status)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(method, route, status)
        return child

    def duration_histogram(self, method: str, route: str) -> Histogram:
        key = (method, route)
        child = self._dur_children.get(key)
        if child is None:
            child = self._dur_children[key] = self.duration.labels(method, route)
        return child

    def initialise_routes(self, routes: list[tuple[str, str, int]]) -> None:
        """Create the success and 500 series of each route at 0, so error ratios exist at once."""
        for method, path, status in routes:
            for code in {str(status), "500"}:
                self.request_counter(method, path, code)
            self.duration_histogram(method, path)

    def render(self, request: Request) -> Response:
        accept = request.headers.get("accept", "")
        if "application/openmetrics-text" in accept:
            body = om_exposition.generate_latest(self.registry)
            return Response(body, media_type=om_exposition.CONTENT_TYPE_LATEST)
        body = text_exposition.generate_latest(self.registry)
        return Response(body, media_type=text_exposition.CONTENT_TYPE_LATEST)
