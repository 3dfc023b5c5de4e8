"""Calls between services: per-hop timeout inside the caller's deadline, retries only when safe,
trace, correlation and budget headers."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from opentelemetry.sdk.trace import TracerProvider

from .context import BUDGET_HEADER, CORRELATION_HEADER, correlation_id_var, remaining
from .errors import DownstreamError
from .metrics import Metrics

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
# Kept back from the caller's remaining budget on every attempt: the time the caller needs to
# record the outcome and answer its own caller before that one gives up.
RESERVE_SECONDS = 0.1
# A peer's answer headers that keep their meaning when its error is passed on to our caller.
PASSED_ON_HEADERS = ("Retry-After", "Idempotent-Replayed")
# No attempt is started with less than this left: it could only time out.
MIN_ATTEMPT_SECONDS = 0.05


class ServiceClient:
    """An httpx client for one peer service.

    A call is retried only when repeating it cannot do harm: an idempotent method, or a request
    carrying an Idempotency-Key (payment charges). Backoff is exponential with full jitter, so a
    fleet of callers does not retry in lock-step.

    Every attempt (retries and backoff included) ends before the current request's deadline, and
    the peer is told how long this attempt waits (``X-Request-Budget-Ms``), so it does not start
    work we have given up on. A DownstreamError says whether the peer may have acted
    (``maybe_processed``): a timeout or a 5xx is an unknown outcome, a refused connection is not.
    """

    def __init__(
        self,
        peer: str,
        base_url: str,
        *,
        timeout: float,
        metrics: Metrics,
        tracer_provider: TracerProvider | None,
        retries: int = 2,
        backoff: float = 0.05,
        transport: httpx.AsyncBaseTransport | None = None,
        internal_token: str = "",
    ) -> None:
        self.peer = peer
        # The service credential (docs/security.md): the peers' internal routes require it.
        self.internal_token = internal_token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        inner = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)
        )
        traced = AsyncOpenTelemetryTransport(inner, tracer_provider=tracer_provider)
        self.client = httpx.AsyncClient(base_url=base_url, transport=traced, timeout=timeout)
        self._requests = metrics.client_requests
        self._duration = metrics.client_duration
        self._retries = metrics.client_retries.labels(peer)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Return the peer's response when it is not a 5xx; raise DownstreamError otherwise."""
        headers = dict(headers or {})
        if self.internal_token:
            headers["X-Internal-Token"] = self.internal_token
        cid = correlation_id_var.get()
        if cid:
            headers[CORRELATION_HEADER] = cid
        safe = method in IDEMPOTENT_METHODS or "Idempotency-Key" in headers
        attempts = 1 + (self.retries if safe else 0)
        hop = self.timeout if timeout is None else timeout
        error: DownstreamError | None = None
        maybe_processed = False
        for attempt in range(attempts):
            if attempt:
                delay = random.uniform(0, self.backoff * 2**attempt)
                left = remaining()
                if left is not None and left - delay < RESERVE_SECONDS + MIN_ATTEMPT_SECONDS:
                    break  # no time for another attempt: do not sleep into the deadline
                self._retries.inc()
                await asyncio.sleep(delay)
            left = remaining()
            budget = hop if left is None else min(hop, left - RESERVE_SECONDS)
            if budget < MIN_ATTEMPT_SECONDS:
                if error is None:
                    error = DownstreamError(
                        self.peer, 504, "deadline_exceeded", "no time left to call " + self.peer
                    )
                break
            headers[BUDGET_HEADER] = str(int(budget * 1000))
            start = time.perf_counter()
            try:
                response = await self.client.request(
                    method, path, json=json, headers=headers, params=params, timeout=budget
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The request never left: the peer cannot have acted on it.
                outcome = "timeout" if isinstance(exc, httpx.TimeoutException) else "error"
                error = DownstreamError(
                    self.peer, 503, "upstream_unavailable", f"{self.peer} is unreachable: {exc}"
                )
            except httpx.TimeoutException:
                outcome, maybe_processed = "timeout", True
                error = DownstreamError(
                    self.peer, 504, "upstream_timeout", f"{self.peer} did not answer in time"
                )
            except httpx.TransportError as exc:
                outcome, maybe_processed = "error", True
                error = DownstreamError(
                    self.peer, 503, "upstream_unavailable", f"{self.peer} is unreachable: {exc}"
                )
            else:
                outcome = str(response.status_code)
                if response.status_code < 500:
                    self._observe(method, outcome, start)
                    return response
                error = _error_from_response(self.peer, response)
                maybe_processed = True
                if response.status_code not in RETRYABLE_STATUS:
                    self._observe(method, outcome, start)
                    break
            self._observe(method, outcome, start)
        assert error is not None
        error.maybe_processed = maybe_processed
        raise error

    def _observe(self, method: str, outcome: str, start: float) -> None:
        self._requests.labels(self.peer, method, outcome).inc()
        self._duration.labels(self.peer, method).observe(time.perf_counter() - start)


def _error_from_response(peer: str, response: httpx.Response) -> DownstreamError:
    """Keep a deeper timeout or outage visible (504/503); any other 5xx is a bad gateway."""
    details: Any = None
    try:
        body = response.json()
        code, message = body.get("code", "upstream_error"), body.get("message", "")
        details = body.get("details")
    except (ValueError, AttributeError):
        code, message = "upstream_error", response.text[:200]
    status = response.status_code if response.status_code in (503, 504) else 502
    error = DownstreamError(
        peer, status, code, f"{peer} failed ({response.status_code}): {message}"
    )
    if isinstance(details, dict):  # e.g. the order id of a checkout whose payment is pending
        error.details = {**details, "peer": peer}
    error.headers = passed_on_headers(response) or None
    return error


def passed_on_headers(response: httpx.Response) -> dict[str, str]:
    return {h: response.headers[h] for h in PASSED_ON_HEADERS if h in response.headers}
