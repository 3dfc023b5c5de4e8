"""Locust statistics as Prometheus metrics, for the "Load and drills" dashboard.

Locust's own stats live in its web UI and CSV files; Prometheus needs them as series so that
what the load generator *sent* can sit next to what the services *saw*. Every request is
recorded in the ``request`` event (cheap: see LocustMetrics), into a registry of our own so
nothing else in the process leaks into the scrape. Distributed runs: workers ship their counts
to the master in their stats reports, and the master serves the sum.

Served on ``/metrics`` of a small server on ``LOCUST_METRICS_HOST:LOCUST_METRICS_PORT``
(127.0.0.1:8090 by default), in headless and web UI mode alike so that one scrape target works
for both; with the web UI the same page is also added to Locust's own Flask app.
"""

from __future__ import annotations

import itertools
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Metric,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from services.kit.metrics import LATENCY_BUCKETS

log = logging.getLogger("triagelab.loadtest.exporter")

# The services' own buckets (docs/telemetry.md), so a dashboard can put client-side and
# server-side latency of one route on the same axis.
BUCKETS = LATENCY_BUCKETS

OUTCOMES = ("success", "failure", "declined")
DEFAULT_PORT = 8090
DEFAULT_HOST = "127.0.0.1"
REPORT_KEY = "triagelab_metrics"  # key of our counts in a worker's report to the master


Entry = list[Any]
"""[request count, sum of seconds, per-bucket counts (not cumulative; the last is +Inf)]."""
Key = tuple[str, str, str]
"""(method, name, outcome)"""


class LocustMetrics:
    """The load generator's metrics: plain counts kept per request, rendered at scrape time.

    A custom collector rather than prometheus_client's Counter/Histogram: recording is a dict
    lookup, a bisect and three additions (no locks: Locust runs on one thread of greenlets),
    and the same counts can be shipped from workers to the master and summed there.
    """

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.local: dict[Key, Entry] = {}
        self.remote: dict[str, dict[Key, Entry]] = {}  # latest cumulative counts per worker
        self.user_count: Callable[[], int] = lambda: 0
        self.registry.register(self)
        if process:
            # process_cpu_seconds_total of the load generator itself: CPU per request is
            # rate(process_cpu_seconds_total{job="locust"}) / rate(locust_requests_total).
            ProcessCollector(registry=self.registry)

    def _entry(self, key: Key) -> Entry:
        entry = self.local.get(key)
        if entry is None:
            entry = self.local[key] = [0, 0.0, [0] * (len(BUCKETS) + 1)]
        return entry

    def declare(
        self, method: str, name: str, outcomes: tuple[str, ...] = ("success", "failure")
    ) -> None:
        """Create a route's series at 0, so rates and failure ratios exist before traffic."""
        for outcome in outcomes:
            self._entry((method, name, outcome))

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
        key = (request_type, name, outcome)
        entry = self.local.get(key) or self._entry(key)
        entry[0] += 1
        if response_time is not None:
            seconds = response_time / 1000.0
            entry[1] += seconds
            entry[2][bisect_left(BUCKETS, seconds)] += 1  # le is inclusive, as in Prometheus

    # -- distributed Locust: workers send their counts, the master serves the sum -------------

    def report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        """Worker: ``report_to_master`` listener; adds this worker's cumulative counts."""
        data[REPORT_KEY] = [[*key, e[0], e[1], e[2]] for key, e in self.local.items()]

    def on_worker_report(self, client_id: str, data: Mapping[str, Any], **_: Any) -> None:
        """Master: ``worker_report`` listener; keeps each worker's latest counts."""
        rows = data.get(REPORT_KEY)
        if not isinstance(rows, list):
            return
        self.remote[client_id] = {
            (m, n, o): [count, total, list(buckets)] for m, n, o, count, total, buckets in rows
        }

    # -- exposition --------------------------------------------------------------------------

    def merged(self) -> dict[Key, Entry]:
        out = {key: [e[0], e[1], list(e[2])] for key, e in self.local.items()}
        for counts in self.remote.values():
            for key, (count, total, buckets) in counts.items():
                entry = out.setdefault(key, [0, 0.0, [0] * (len(BUCKETS) + 1)])
                entry[0] += count
                entry[1] += total
                entry[2] = [a + b for a, b in zip(entry[2], buckets, strict=True)]
        return out

    def describe(self) -> list[Metric]:
        return self._families({}, users=0)

    def collect(self) -> list[Metric]:
        return self._families(self.merged(), users=self.user_count())

    def _families(self, merged: dict[Key, Entry], users: int) -> list[Metric]:
        requests = CounterMetricFamily(
            "locust_requests",
            "Requests Locust completed, by outcome (declined = an expected 402 from a test card).",
            labels=["method", "name", "outcome"],
        )
        failures = CounterMetricFamily(
            "locust_failures",
            "Requests Locust counted as failed (same as outcome=failure).",
            labels=["method", "name"],
        )
        latency = HistogramMetricFamily(
            "locust_response_time_seconds",
            "Response time seen by Locust, in seconds.",
            labels=["method", "name"],
        )
        routes: dict[tuple[str, str], Entry] = {}
        for (method, name, outcome), (count, total, buckets) in sorted(merged.items()):
            requests.add_metric([method, name, outcome], count)
            route = routes.setdefault((method, name), [0, 0.0, [0] * (len(BUCKETS) + 1)])
            if outcome == "failure":
                route[0] += count
            route[1] += total
            route[2] = [a + b for a, b in zip(route[2], buckets, strict=True)]
        for (method, name), (failed, total, buckets) in routes.items():
            failures.add_metric([method, name], failed)
            cumulative = list(itertools.accumulate(buckets))
            bounds = [*(floatToGoString(b) for b in BUCKETS), "+Inf"]
            latency.add_metric([method, name], list(zip(bounds, cumulative, strict=True)), total)
        gauge = GaugeMetricFamily("locust_users", "Simulated users running now.", value=users)
        return [requests, failures, latency, gauge]

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
        from locust.runners import MasterRunner, WorkerRunner

        if isinstance(runner, WorkerRunner):
            # A worker's counts travel to the master with its stats reports (every few
            # seconds) and are served there, so the scrape target is the same in every mode.
            environment.events.report_to_master.add_listener(metrics.report)
            return
        if isinstance(runner, MasterRunner):
            environment.events.worker_report.add_listener(metrics.on_worker_report)
        if runner is not None:
            metrics.user_count = lambda: runner.user_count
        if web_ui is not None:
            _add_web_ui_route(web_ui, metrics)
        address = metrics_address()
        if address is None:
            return
        host, port = address
        server = serve(metrics, host, port)
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
