"""Per-request context shared by logging, metrics and outgoing calls."""

from __future__ import annotations

import re
import time
from contextvars import ContextVar

correlation_id_var: ContextVar[str] = ContextVar("correlation_id", default="")
CORRELATION_HEADER = "X-Correlation-ID"
CORRELATION_SCOPE_KEY = "kit.correlation_id"
"""The request's correlation id in its ASGI scope too: an unhandled exception is answered by
Starlette's outermost middleware, after the telemetry middleware has reset the context var."""

# A client's X-Correlation-ID is kept only if it is this (a uuid, a hex id, "e2e-checkout-1"):
# anything else (other characters, longer) is replaced by a fresh id, so no client text of its
# choosing reaches every log line and every peer.
CORRELATION_ID_MAX = 64
CORRELATION_ID = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % CORRELATION_ID_MAX)

# The request's deadline on time.monotonic()'s clock (None: no deadline, e.g. a background
# worker). Set from the caller's X-Request-Budget-Ms on arrival; outgoing calls never wait past it
# and pass what is left on, so every hop's budget nests inside its caller's.
deadline_var: ContextVar[float | None] = ContextVar("deadline", default=None)

BUDGET_HEADER = "X-Request-Budget-Ms"


def remaining() -> float | None:
    """Seconds left before the current request's caller gives up (None: no deadline)."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()
