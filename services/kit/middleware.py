"""The kit's one pure-ASGI middleware: correlation id, body limit, RED metrics, access log.

Pure ASGI rather than @app.middleware("http"): measured here, BaseHTTPMiddleware costs ~46% of
a trivial endpoint's throughput; this costs next to nothing (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import time
from typing import Any

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import BUDGET_HEADER, correlation_id_var, deadline_var
from .errors import error_response
from .logs import get_logger
from .metrics import Metrics

UNMATCHED = "<unmatched>"
# Probes, scrapes and the admin API are not user traffic: no RED series, no access line.
UNTRACKED = frozenset({"/metrics", "/healthz", "/readyz"})
CORRELATION_HEADER = b"x-correlation-id"
BUDGET = BUDGET_HEADER.lower().encode()
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# uuid4 bits: version 4 and the RFC 4122 variant, applied to 128 random bits (as uuid.uuid4).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_correlation_id() -> str:
    """The same 32 hex digits as uuid.uuid4().hex, without building a UUID object."""
    return format(int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET, "032x")


class TelemetryMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, budget_seconds: float
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.budget = budget_seconds
        self.log = get_logger(service=metrics.service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        cid = ""
        length = -1
        budget = self.budget
        for name, value in scope["headers"]:
            if name == CORRELATION_HEADER:
                cid = value.decode("latin-1")[:128]
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == BUDGET and value.isdigit():
                # The caller's remaining budget can only shorten ours, never lengthen it.
                budget = min(budget, int(value) / 1000)
        if not cid:
            cid = new_correlation_id()
        token = correlation_id_var.set(cid)
        deadline_token = deadline_var.set(time.monotonic() + budget)

        ctx = trace.get_current_span().get_span_context()
        trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        extra_headers = [(CORRELATION_HEADER, cid.encode("latin-1"))]
        if trace_id:
            extra_headers.append((b"x-trace-id", trace_id.encode()))
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        path = scope["path"]
        tracked = path not in UNTRACKED and not path.startswith("/admin")
        metrics = self.metrics
        if tracked:
            metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            if length < 0 and scope["method"] in BODY_METHODS:
                receive, length = await self._buffer(receive)
            if length > self.max_body:
                response = error_response(
                    413, "body_too_large", f"request body exceeds {self.max_body} bytes"
                )
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            if tracked:
                elapsed = time.perf_counter() - start
                metrics.in_flight.dec()
                self._record(scope, status, elapsed, trace_id)
            correlation_id_var.reset(token)
            deadline_var.reset(deadline_token)

    async def _buffer(self, receive: Receive) -> tuple[Receive, int]:
        """A chunked body has no content-length: read it (up to the limit), then replay it."""
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.max_body or not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        return replayed, seen

    def _record(self, scope: Scope, status: int, elapsed: float, trace_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        method = scope["method"]
        metrics = self.metrics
        metrics.request_counter(method, template, str(status)).inc()
        exemplar = {"trace_id": trace_id} if trace_id else None
        metrics.duration_histogram(method, template).observe(elapsed, exemplar)
        self.log.info(
            "request",
            method=method,
            route=template,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )


class DeadlineGate:
    """Innermost: a request whose caller has already given up is refused, not worked on.

    It runs after the fault middleware, so a request held by a hang (or queued behind a slow
    pool) that comes out past its deadline does no work: no late charge, no orphan write.
    """

    def __init__(self, app: ASGIApp, routes: list[Any]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = deadline_var.get()
        if deadline is not None and scope["type"] == "http" and time.monotonic() >= deadline:
            resolve_route(self.routes, scope)
            response = error_response(
                504, "deadline_exceeded", "the caller's deadline passed before work started"
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def resolve_route(routes: list[Any], scope: Scope) -> None:
    """Label a response given before routing with its route template, as if the handler had
    answered (RED series by route, never "<unmatched>" for a known route)."""
    for route in routes:
        if scope["method"] in route.methods and route.path_regex.match(scope["path"]):
            scope["route"] = route
            return
