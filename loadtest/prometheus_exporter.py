"""Locust statistics as Prometheus metrics, for the "Load and drills" dashboard.

Locust's own stats live in its web UI and CSV files; Prometheus needs them as series so that
what the load generator *sent* can sit next to what the services *saw*. Every request is
recorded in the ``request`` event (a dict lookup, a counter and a histogram observation: cheap),
into a registry of our own so nothing else in the process leaks into the scrape.

Served on ``/metrics`` of a small server on ``LOCUST_METRICS_HOST:LOCUST_METRICS_PORT``
(127.0.0.1:8090 by default), in headless and web UI mode alike so that one scrape target works
for both; with the web UI the same page is also added to Locust's own Flask app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)

log = logging.getLogger("triagelab.loadtest.exporter")

# Same buckets as the services' http_request_duration_seconds (docs/telemetry.md), so a
# dashboard can put client-side and server-side latency of one route on the same axis.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OUTCOMES = ("success", "failure", "declined")
DEFAULT_PORT = 8090
DEFAULT_HOST = "127.0.0.1"


class LocustMetrics:
    """The load generator's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "locust_requests",
            "Requests Locust completed, by outcome (declined = an expected 402 from a test card).",
            ["method", "name", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "locust_failures",
            "Requests Locust counted as failed (same as outcome=failure).",
            ["method", "name"],
            registry=self.registry,
        )
        self.response_time = Histogram(
            "locust_response_time_seconds",
            "Response time seen by Locust, in seconds.",
            ["method", "name"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.users = Gauge("locust_users", "Simulated users running now.", registry=self.registry)
        if process:
            # process_cpu_seconds_total of the load generator itself: CPU per request is
            # rate(process_cpu_seconds_total{job="locust"}) / rate(locust_requests_total).
            ProcessCollector(registry=self.registry)
        # (method, name, outcome) -> bound increment/observe functions; skips labels() per request.
        self._children: dict[tuple[str, str, str], tuple[Callable, Callable, Callable | None]] = {}

    def declare(
        self, method: str, name: str, outcomes: tuple[str, ...] = ("success", "failure")
    ) -> None:
        """Create a route's series at 0, so rates and failure ratios exist before traffic."""
        for outcome in outcomes:
            self._child(method, name, outcome)

    def _child(
        self, method: str, name: str, outcome: str
    ) -> tuple[Callable, Callable, Callable | None]:
        key = (method, name, outcome)
        child = self._children.get(key)
        if child is None:
            failure_inc = self.failures.labels(method, name).inc if outcome == "failure" else None
            if outcome != "failure":
                self.failures.labels(method, name)  # exists at 0 for the failure ratio
            child = (
                self.requests.labels(method, name, outcome).inc,
                self.response_time.labels(method, name).observe,
                failure_inc,
            )
            self._children[key] = child
        return child

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float | None,
        exception: BaseException | None = None,
        context: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        """Locust ``request`` event listener; ``response_time`` is in milliseconds."""
        if exception is not None:
            outcome = "failure"
        elif context and context.get("expect") == "declined":
            outcome = "declined"
        else:
            outcome = "success"
        inc, observe, failure_inc = self._child(request_type, name, outcome)
        inc()
        if response_time is not None:
            observe(response_time / 1000.0)
        if failure_inc is not None:
            failure_inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_address(env: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """Where to serve /metrics, or None when LOCUST_METRICS_PORT=off."""
    env = os.environ if env is None else env
    raw = (env.get("LOCUST_METRICS_PORT") or str(DEFAULT_PORT)).strip().lower()
    if raw in {"off", "none", "disabled", "-1"}:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"LOCUST_METRICS_PORT={raw!r} is not a port number or 'off'") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"LOCUST_METRICS_PORT={port} is out of range")
    return (env.get("LOCUST_METRICS_HOST") or DEFAULT_HOST).strip(), port


def serve(metrics: LocustMetrics, host: str, port: int) -> Any:
    """Start a gevent WSGI server for /metrics; returns it (``server_port`` is the bound port)."""
    from gevent.pywsgi import WSGIServer  # Locust runs on gevent; this adds no thread

    server = WSGIServer((host, port), make_wsgi_app(metrics.registry), log=None)
    server.start()
    return server


def install(events: Any, metrics: LocustMetrics | None = None) -> LocustMetrics:
    """Register the exporter on Locust's event hooks; call once from the locustfile."""
    metrics = metrics if metrics is not None else LocustMetrics()
    events.request.add_listener(metrics.on_request)

    def on_init(environment: Any, runner: Any = None, web_ui: Any = None, **_: Any) -> None:
        if runner is not None:
            metrics.users.set_function(lambda: runner.user_count)
        if web_ui is not None:
            _add_web_ui_route(web_ui, metrics)
        address = metrics_address()
        if address is None:
            return
        host, port = address
        is_worker = type(runner).__name__ == "WorkerRunner"
        try:
            server = serve(metrics, host, port)
        except OSError as exc:
            if is_worker:  # several workers on one host: only the first gets the port
                log.warning("metrics exporter not started on %s:%s: %s", host, port, exc)
                return
            raise
        bound = server.server_port
        log.info("Prometheus metrics at http://%s:%s/metrics", host, bound)
        port_file = os.environ.get("LOCUST_METRICS_PORT_FILE")
        if port_file:
            tmp = f"{port_file}.tmp"
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(f"{bound}\n")
            os.replace(tmp, port_file)  # readers never see a half-written file

        def on_quit(**_: Any) -> None:
            server.stop(timeout=1)

        environment.events.quit.add_listener(on_quit)

    events.init.add_listener(on_init)
    return metrics


def _add_web_ui_route(web_ui: Any, metrics: LocustMetrics) -> None:
    from flask import Response

    def view() -> Response:
        return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    web_ui.app.add_url_rule("/metrics", "triagelab_metrics", view)
