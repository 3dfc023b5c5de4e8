"""Prometheus metrics: one registry per app, RED metrics, build info, /metrics exposition."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
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


# Where the memory limit a process runs under is written (container, pod, systemd unit).
CGROUP_V2_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
CGROUP_V1_UNLIMITED = 2**60  # v1 says "no limit" with a page-rounded 2**63 - 1


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def memory_limit(
    setting_mb: int | None, v2: Path | None = None, v1: Path | None = None
) -> tuple[int, str] | None:
    """(bytes, source) of the memory limit this process runs under, or None when none is known.

    The kernel's limit: cgroup v2 ``memory.max`` (a number, or "max": none), else cgroup v1
    ``memory.limit_in_bytes`` (2**60 or more: none). And the limit the deployment declares in
    ``MEMORY_LIMIT_MB`` (the native lab passes services/topology.toml's; nothing enforces it).
    With both, the smaller is the one the process meets first: a native lab run inside a
    container of 8 GiB still has its service's declared limit.
    """
    kernel = None
    value = _read(v2 or CGROUP_V2_MEMORY_MAX)
    if value.isdigit():
        kernel = int(value)
    else:
        value = _read(v1 or CGROUP_V1_MEMORY_LIMIT)
        if value.isdigit() and int(value) < CGROUP_V1_UNLIMITED:
            kernel = int(value)
    declared = setting_mb * 2**20 if setting_mb else None
    if declared is not None and (kernel is None or declared < kernel):
        return declared, "setting"
    return (kernel, "cgroup") if kernel is not None else None


GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0)

# One gc callback per process times each collection into every live app's histogram (tests run
# several apps in one process; a service runs one). It observes into label children made
# beforehand: `labels()` takes the metric's lock, which the collection may have interrupted.
_gc_apps: weakref.WeakSet[Metrics] = weakref.WeakSet()
_gc_started = [0.0]


def _time_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started[0]
    generation = str(info.get("generation", ""))
    for app in list(_gc_apps):
        child = app.gc_pause_children.get(generation)
        if child is not None:
            child.observe(took)


class Metrics:
    """The app's registry and the metrics every service has; services register their own on it."""

    def __init__(
        self,
        service: str,
        version: str,
        environment: str,
        memory_limit_mb: int | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)  # collections and objects collected, per generation
        r = self.registry
        # Read once: a process's limit does not change while it runs. No limit known, no series
        # (never a made-up value): ServiceMemorySaturation then has nothing to compare with.
        self.memory_limit = memory_limit(memory_limit_mb)
        if self.memory_limit:
            Gauge(
                "process_memory_limit_bytes",
                "The memory limit this process runs under: source=cgroup is enforced by the "
                "kernel, source=setting is MEMORY_LIMIT_MB (declared, not enforced).",
                ["source"],
                registry=r,
            ).labels(self.memory_limit[1]).set(self.memory_limit[0])
        # How long each collection stopped the process (the GIL is held throughout).
        self.gc_pause = Histogram(
            "python_gc_pause_seconds",
            "Duration of garbage collections, by generation.",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=r,
        )
        self.gc_pause_children = {g: self.gc_pause.labels(g) for g in ("0", "1", "2")}
        _gc_apps.add(self)
        if _time_collection not in gc.callbacks:
            gc.callbacks.append(_time_collection)
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
