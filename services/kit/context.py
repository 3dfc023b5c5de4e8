"""Per-request context shared by logging, metrics and outgoing calls."""

from __future__ import annotations

import time
from contextvars import ContextVar

correlation_id_var: ContextVar[str] = ContextVar("correlation_id", default="")

# The request's deadline on time.monotonic()'s clock (None: no deadline, e.g. a background
# worker). Set from the caller's X-Request-Budget-Ms on arrival; outgoing calls never wait past it
# and pass what is left on, so every hop's budget nests inside its caller's.
deadline_var: ContextVar[float | None] = ContextVar("deadline", default=None)

BUDGET_HEADER = "X-Request-Budget-Ms"


def remaining() -> float | None:
    """Seconds left before the current request's caller gives up (None: no deadline)."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()
