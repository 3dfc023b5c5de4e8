"""structlog JSON logs: one object per line on stdout, trace ids attached, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

from .context import correlation_id_var

# Keys whose values never reach a log line (card_last4 is fine: it is not a secret).
_SECRET_KEYS = re.compile(
    r"pass(word|wd)?$|secret|token|authori[sz]ation|cookie|api[_-]?key|card_?number|cvc|cvv|^pan$",
    re.I,
)
# 13-19 digits, optionally split by spaces or dashes: a card number (PAN).
_PAN = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# JWTs and bearer credentials that slip into free text.
_JWT = re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*")
_BEARER = re.compile(r"(?i)\bbearer\s+[\w.~+/=-]+")
REDACTED = "[REDACTED]"


def redact_value(value: str) -> str:
    """Mask card numbers and tokens inside free text (messages, exception strings)."""
    if len(value) < 13:
        return value
    value = _PAN.sub(REDACTED, value)
    value = _JWT.sub(REDACTED, value)
    return _BEARER.sub("Bearer " + REDACTED, value)


def _redact(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact_value(obj)
    if isinstance(obj, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEYS.search(k) else _redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_redact(v) for v in obj]
    return obj


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: secrets never reach a log line, whatever key or text carries them."""
    for key, value in event_dict.items():
        if _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str | dict | list | tuple):
            event_dict[key] = _redact(value)
    return event_dict


def add_trace_context(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Put the current span's ids and the correlation id on every line, so logs join traces."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    else:
        event_dict.setdefault("trace_id", None)
        event_dict.setdefault("span_id", None)
    event_dict.setdefault("correlation_id", correlation_id_var.get() or None)
    return event_dict


def _service_adder(service: str):
    def add_service(
        _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _serialize(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def _serialize_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _logger_factory() -> Any:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        return structlog.BytesLoggerFactory(buffer)
    return structlog.PrintLoggerFactory(sys.stdout)


def configure_logging(service: str, level: str = "info") -> None:
    """Configure structlog and the stdlib (uvicorn) loggers to print the same JSON lines.

    Called from each app's factory; idempotent, the last call wins (one service per process).
    """
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _service_adder(service),
        add_trace_context,
        structlog.processors.format_exc_info,
        redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer(serializer=_serialize)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(serializer=_serialize_text),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the kit logs its own calls
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # The kit's middleware writes one access line per request, with trace ids; uvicorn's own
    # access log would be a second, id-less line.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(**bound)
