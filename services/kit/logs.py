"""structlog JSON logs: one object per line on stdout, trace ids attached, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
import time
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


# Key names seen so far -> whether they name a secret (a service logs a small, fixed set).
_secret_key_cache: dict[str, bool] = {}


def _is_secret_key(key: str) -> bool:
    hit = _secret_key_cache.get(key)
    if hit is None:
        hit = _SECRET_KEYS.search(key) is not None
        if len(_secret_key_cache) < 4096:
            _secret_key_cache[key] = hit
    return hit


def redact_value(value: str) -> str:
    """Mask card numbers and tokens inside free text (messages, exception strings)."""
    if len(value) < 13:
        return value
    if value.isalnum():
        # Hot path (ids, hashes): all word characters, so no whitespace (no bearer), no "."
        # (no JWT), and `\b` only at the ends: a PAN could only be the whole string.
        return REDACTED if len(value) <= 19 and value.isdecimal() else value
    value = _PAN.sub(REDACTED, value)
    if "eyJ" not in value:  # every JWT match starts with it
        return _BEARER.sub("Bearer " + REDACTED, value)
    value = _JWT.sub(REDACTED, value)
    return _BEARER.sub("Bearer " + REDACTED, value)


def _redact(obj: Any) -> Any:
    if isinstance(obj, str):
        return redact_value(obj)
    if isinstance(obj, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret_key(k) else _redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_redact(v) for v in obj]
    return obj


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: secrets never reach a log line, whatever key or text carries them."""
    for key, value in event_dict.items():
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_value(value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = _redact(value)
    return event_dict


# The ISO-8601 UTC stamp structlog's TimeStamper(fmt="iso", utc=True) writes
# (datetime.now(utc).isoformat() with "Z"), with the date-and-time part built once a second.
_stamp_cache: list = [None, ""]


def add_timestamp(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    us = time.time_ns() // 1000
    seconds, micros = divmod(us, 1_000_000)
    cache = _stamp_cache
    if cache[0] != seconds:
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        cache[0] = seconds
    event_dict["timestamp"] = f"{cache[1]}.{micros:06d}Z" if micros else cache[1] + "Z"
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
        add_timestamp,
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


class _Logger:
    """A lazy logger like structlog's proxy, minus its cost on the hot path.

    structlog's proxy assembles a new bound logger (logger factory, wrapper, context) on every
    call unless `cache_logger_on_first_use`, which would pin the first configuration forever
    (tests build several apps per process; `configure_logging`'s last call must win). This one
    reassembles only when structlog's configuration has changed since its last call.
    """

    __slots__ = ("_bound", "_config", "_values")

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self._config: tuple | None = None
        self._bound: Any = None

    def _current(self) -> Any:
        config = tuple(structlog.get_config().values())
        if config != self._config:
            self._bound = structlog.get_logger().bind(**self._values)
            self._config = config
        return self._bound

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)

    def __repr__(self) -> str:
        return f"<kit logger {self._values!r}>"


def get_logger(**bound: Any) -> structlog.typing.FilteringBoundLogger:
    return _Logger(bound)  # type: ignore[return-value]
