"""The native lab's logs, read where they are: one file per component, merged in time order.

The services write structlog JSON lines (``timestamp``, ``level``, ``event``, ``trace_id``);
Prometheus and Alertmanager write their own JSON (``ts``, ``msg``); Locust writes plain text.
Each line becomes one ``LogLine`` whatever its source, so one filter serves them all. Files are
streamed and merged with ``heapq.merge``: the memory kept is one line per file plus the last
``limit`` matches.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

LEVELS = ("debug", "info", "warning", "error", "critical")
_LEVEL_ALIASES = {"warn": "warning", "err": "error", "fatal": "critical", "exception": "error"}


@dataclass(frozen=True)
class LogLine:
    ts: float  # unix time; a line without one gets its file's previous time
    component: str
    level: str
    event: str
    trace_id: str | None
    fields: dict[str, Any]
    raw: str

    def rank(self) -> int:
        return LEVELS.index(self.level) if self.level in LEVELS else 1


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse(component: str, text: str, last_ts: float) -> LogLine:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return LogLine(last_ts, component, "info", text.rstrip(), None, {}, text)
    level = str(data.get("level") or "info").lower()
    level = _LEVEL_ALIASES.get(level, level)
    ts = _time(data.get("timestamp")) or _time(data.get("ts")) or last_ts
    event = str(data.get("event") or data.get("msg") or "")
    skip = {"event", "msg", "level", "timestamp", "ts", "color_message"}
    fields = {k: v for k, v in data.items() if k not in skip and v is not None}
    return LogLine(ts, component, level, event, data.get("trace_id"), fields, text)


def read(path: Path, component: str) -> Iterator[LogLine]:
    last = 0.0
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for text in fh:
            if not text.strip():
                continue
            line = parse(component, text.rstrip("\n"), last)
            last = line.ts
            yield line


@dataclass(frozen=True)
class LogFilter:
    level: str | None = None  # this level or worse
    event: str | None = None  # a regex on the event (message)
    trace_id: str | None = None
    since: float = 0.0
    until: float | None = None
    where: tuple[tuple[str, str], ...] = ()  # (field, regex the whole value must match)
    min_ms: float | None = None  # request lines at least this slow (their duration_ms)

    def keeps(self, line: LogLine) -> bool:
        if self.level and line.rank() < LEVELS.index(self.level):
            return False
        if self.event and not re.search(self.event, line.event):
            return False
        if self.trace_id and line.trace_id != self.trace_id:
            return False
        for key, pattern in self.where:
            if key not in line.fields or not re.fullmatch(pattern, str(line.fields[key])):
                return False
        if self.min_ms is not None and not _at_least(line.fields.get("duration_ms"), self.min_ms):
            return False
        if line.ts < self.since:
            return False
        return self.until is None or line.ts <= self.until


def _at_least(value: Any, bound: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= bound


def parse_where(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``status=5..`` → (``status``, ``5..``); a clear error for an item without ``=``."""
    out = []
    for item in items or ():
        key, sep, pattern = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where takes FIELD=REGEX, not {item!r}")
        re.compile(pattern)
        out.append((key, pattern))
    return tuple(out)


def merged(files: dict[str, Path]) -> Iterator[LogLine]:
    """Every line of every file, in time order (each file is already in time order)."""
    streams = [read(path, name) for name, path in files.items() if path.exists()]
    return heapq.merge(*streams, key=lambda line: line.ts)


def last(lines: Iterable[LogLine], where: LogFilter, limit: int) -> list[LogLine]:
    """The last ``limit`` lines that pass the filter (0: all of them)."""
    kept: deque[LogLine] = deque(maxlen=limit or None)
    kept.extend(line for line in lines if where.keeps(line))
    return list(kept)
