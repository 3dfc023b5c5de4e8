"""Per-request context shared by logging, metrics and outgoing calls."""

from contextvars import ContextVar

correlation_id_var: ContextVar[str] = ContextVar("correlation_id", default="")
