"""structlog JSON logs: one object per line on stdout, trace ids attached, secrets redacted."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

from .context import correlation_id_var
from .redact import REDACTED, redact_any, redact_key, redact_text

__all__ = ["REDACTED", "configure_logging", "get_logger", "redact", "redact_value"]

redact_value = redact_text  # the old name: mask secrets in one piece of free text

# Values the kit's own processors write (never client text): not worth a look per line.
# `_record` and `_from_structlog` are ProcessorFormatter's metadata (removed before rendering).
_TRUSTED_KEYS = frozenset({"timestamp", "level", "_record", "_from_structlog"})


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: secrets never reach a log line, whatever key, type or text carries
    them (services/kit/redact.py has the rules). Runs after format_exc_info, so tracebacks are
    text by now; every value comes out JSON-ready (no `default=str` surprise at render time)."""
    renamed = None
    for key, value in event_dict.items():
        if key in _TRUSTED_KEYS:
            continue
        clean_key, secret = redact_key(key if isinstance(key, str) else str(key))
        if secret:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_any(value)
        if clean_key != key:
            renamed = renamed or []
            renamed.append((key, clean_key))
    if renamed:  # a key that itself held a card number or a credential
        for key, clean_key in renamed:
            event_dict[clean_key] = event_dict.pop(key)
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


def _json_default(obj: Any) -> Any:
    # Only for what `redact` has not seen (it makes every value JSON-ready): redacted too.
    clean = redact_any(obj)
    return clean if clean is not obj else redact_text(str(obj))


def _serialize(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default)


def _serialize_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=_json_default).decode()


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
