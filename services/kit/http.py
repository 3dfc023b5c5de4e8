"""Calls between services: per-hop timeout, retries only when safe, trace + correlation headers."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport
from opentelemetry.sdk.trace import TracerProvider

from .context import correlation_id_var
from .errors import DownstreamError
from .metrics import Metrics

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class ServiceClient:
    """An httpx client for one peer service.

    A call is retried only when repeating it cannot do harm: an idempotent method, or a request
    carrying an Idempotency-Key (payment charges). Backoff is exponential with full jitter, so a
    fleet of callers does not retry in lock-step.
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
    ) -> None:
        self.peer = peer
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
        cid = correlation_id_var.get()
        if cid:
            headers["X-Correlation-ID"] = cid
        safe = method in IDEMPOTENT_METHODS or "Idempotency-Key" in headers
        attempts = 1 + (self.retries if safe else 0)
        kwargs: dict[str, Any] = {"json": json, "headers": headers, "params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        error: DownstreamError | None = None
        for attempt in range(attempts):
            if attempt:
                self._retries.inc()
                await asyncio.sleep(random.uniform(0, self.backoff * 2**attempt))
            start = time.perf_counter()
            try:
                response = await self.client.request(method, path, **kwargs)
            except httpx.TimeoutException:
                outcome = "timeout"
                error = DownstreamError(
                    self.peer, 504, "upstream_timeout", f"{self.peer} did not answer in time"
                )
            except httpx.TransportError as exc:
                outcome = "error"
                error = DownstreamError(
                    self.peer, 503, "upstream_unavailable", f"{self.peer} is unreachable: {exc}"
                )
            else:
                outcome = str(response.status_code)
                if response.status_code < 500:
                    self._observe(method, outcome, start)
                    return response
                error = _error_from_response(self.peer, response)
                if response.status_code not in RETRYABLE_STATUS:
                    self._observe(method, outcome, start)
                    break
            self._observe(method, outcome, start)
        assert error is not None
        raise error

    def _observe(self, method: str, outcome: str, start: float) -> None:
        self._requests.labels(self.peer, method, outcome).inc()
        self._duration.labels(self.peer, method).observe(time.perf_counter() - start)


def _error_from_response(peer: str, response: httpx.Response) -> DownstreamError:
    """Keep a deeper timeout or outage visible (504/503); any other 5xx is a bad gateway."""
    try:
        body = response.json()
        code, message = body.get("code", "upstream_error"), body.get("message", "")
    except ValueError:
        code, message = "upstream_error", response.text[:200]
    status = response.status_code if response.status_code in (503, 504) else 502
    return DownstreamError(peer, status, code, f"{peer} failed ({response.status_code}): {message}")
