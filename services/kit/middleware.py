"""The kit's pure-ASGI middleware: correlation id, body limit, RED metrics, access log
(TelemetryMiddleware); the deadline gate; the request faults' middleware (FaultMiddleware).

It also refuses what no route can take, with the standard error body instead of a 500 further
in: a path or query string with control characters or bytes that are not UTF-8 (400), and a
JSON body that is not strict JSON (422: NaN, lone surrogates, nesting deeper than 1024).

Pure ASGI rather than @app.middleware("http"): measured here, BaseHTTPMiddleware costs ~46% of
a trivial endpoint's throughput; this costs next to nothing (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import builtins
import os
import random
import time
from typing import Any
from urllib.parse import unquote_plus

import orjson
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import (
    BUDGET_HEADER,
    CORRELATION_HEADER,
    CORRELATION_ID,
    CORRELATION_SCOPE_KEY,
    correlation_id_var,
    deadline_var,
)
from .errors import error_response
from .logs import get_logger
from .metrics import Metrics

UNMATCHED = "<unmatched>"
# Probes, scrapes and the admin API are not user traffic: no RED series, no access line.
UNTRACKED = frozenset({"/metrics", "/healthz", "/readyz"})
CORRELATION = CORRELATION_HEADER.lower().encode()
BUDGET = BUDGET_HEADER.lower().encode()
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
BUDGET_DIGITS = 9  # X-Request-Budget-Ms: more digits than this (11 days) is not a budget
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
        content_type = b""
        budget = self.budget
        for name, value in scope["headers"]:
            if name == CORRELATION:
                # Kept only if it is a plain id (context.CORRELATION_ID); else a fresh one.
                cid = value.decode("ascii") if CORRELATION_ID.fullmatch(value) else ""
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                content_type = value
            elif name == BUDGET and value.isdigit() and len(value) <= BUDGET_DIGITS:
                # The caller's remaining budget can only shorten ours, never lengthen it.
                budget = min(budget, int(value) / 1000)
        if not cid:
            cid = new_correlation_id()
        token = correlation_id_var.set(cid)
        scope[CORRELATION_SCOPE_KEY] = cid
        deadline_token = deadline_var.set(time.monotonic() + budget)

        ctx = trace.get_current_span().get_span_context()
        trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        extra_headers = [(CORRELATION, cid.encode("latin-1"))]
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
            body = None
            if scope["method"] in BODY_METHODS and length <= self.max_body:
                receive, body = await self._buffer(receive)
                length = len(body)
                scope[BODY] = body
            if length > self.max_body:
                response = error_response(
                    413, "body_too_large", f"request body exceeds {self.max_body} bytes"
                )
            else:
                response = _malformed(scope, body, content_type)
            if response is not None:
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

    async def _buffer(self, receive: Receive) -> tuple[Receive, bytes]:
        """Read the body (up to the limit: a chunked one has no content-length), to check it,
        then replay it to the app."""
        messages: list[Message] = []
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            chunk = message.get("body", b"")
            chunks.append(chunk)
            seen += len(chunk)
            if seen > self.max_body or not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        return replayed, b"".join(chunks)

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


def _printable(text: str) -> bool:
    # U+FFFD is what the server decoded a byte that is not UTF-8 to (uvicorn: errors="replace").
    return text.isprintable() and "\ufffd" not in text


def _is_json(content_type: bytes) -> bool:
    """As FastAPI decides to parse a body as JSON: no content type, or application/[*+]json."""
    media = content_type.partition(b";")[0].strip().lower()
    return (
        not media
        or media == b"application/json"
        or (media.startswith(b"application/") and media.endswith(b"+json"))
    )


def _malformed(scope: Scope, body: bytes | None, content_type: bytes) -> ASGIApp | None:
    """The error response for a request no route can take safely (None: let it through)."""
    if not _printable(scope["path"]):
        return error_response(
            400, "bad_request", "the path has control characters or bytes that are not UTF-8"
        )
    query = scope.get("query_string", b"")
    if query:
        try:
            ok = _printable(unquote_plus(query.decode("latin-1"), errors="strict"))
        except UnicodeDecodeError:
            ok = False
        if not ok:
            return error_response(
                400,
                "bad_request",
                "the query string has control characters or bytes that are not UTF-8",
            )
    if body and _is_json(content_type):
        # FastAPI parses with json.loads, which takes NaN, Infinity and lone surrogates (a str
        # that cannot be logged or stored: a 500 later); orjson is strict RFC 8259.
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            message = f"body: not valid JSON ({str(exc).partition(':')[0]})"
            details = [{"loc": ["body"], "msg": message, "type": "json_invalid"}]
            return error_response(422, "validation_error", message, details)
    return None


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


_CODES = {
    502: ("bad_gateway", "bad gateway"),
    503: ("service_unavailable", "service temporarily unavailable"),
    504: ("gateway_timeout", "gateway timeout"),
}


class FaultMiddleware:
    """Applies request faults (faults.FaultManager). With no fault active it costs one attribute
    read per request. Here, not in faults.py, because a traceback through it may reach a
    trainee's eyes: every request passes this frame."""

    def __init__(self, app: ASGIApp, manager: Any, routes: list[Any]) -> None:
        self.app = app
        self.manager = manager
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        faults = self.manager.request_faults
        if not faults or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/admin") or path in ("/healthz", "/readyz", "/metrics"):
            await self.app(scope, receive, send)
            return
        for fault in faults:
            if fault.route is not None and not fault.route(path):
                continue
            if fault.spec.card_prefix is not None and not _card_in(scope, fault.spec.card_prefix):
                continue
            if random.random() >= fault.spec.probability:
                continue
            kind = fault.spec.kind
            if kind == "latency":
                jitter = fault.spec.jitter_ms
                delay = fault.spec.ms + (random.uniform(-jitter, jitter) if jitter else 0)
                await asyncio.sleep(max(delay, 0) / 1000)
            elif kind == "hang":
                await asyncio.sleep(fault.spec.seconds)
            elif fault.spec.status == 500:  # error, bad_release: a bug's path (request_checks)
                scope[FAILURE] = getattr(builtins, fault.spec.exception)(fault.spec.message)
                break
            else:  # a failed dependency's answer, route label and all
                resolve_route(self.routes, scope)
                status = fault.spec.status
                code, message = _CODES.get(status, ("internal_error", "internal server error"))
                await error_response(status, code, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _card_in(scope: Scope, prefix: str) -> bool:
    """Is the request's JSON body's card_number in the range `prefix` starts?"""
    try:
        card = orjson.loads(scope.get(BODY) or b"null").get("card_number")
    except (orjson.JSONDecodeError, AttributeError):  # not JSON, or not an object
        return False
    return isinstance(card, str) and card.startswith(prefix)


BODY = "kit.body"
"""The scope key of the request body TelemetryMiddleware read (and checked) before the app."""

FAILURE = "kit.failure"
"""The scope key of an exception a request is to raise in its own handling (app.request_checks:
in a module and a function whose names a traceback may show a trainee)."""
