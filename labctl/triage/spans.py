"""The native lab's traces, read where they are: one JSON-lines span file per service.

Streamed line by line (a lab that ran for hours has hundreds of MB): listing keeps one small
summary per trace, showing one trace keeps only that trace's spans. Nothing is copied or served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def http_status(self) -> int | None:
        code = self.attributes.get("http.response.status_code") or self.attributes.get(
            "http.status_code"
        )
        return int(code) if code is not None else None

    @property
    def error(self) -> bool:
        """Failed: the span's status is ERROR, or it answered (or got) a 5xx."""
        return self.status == "ERROR" or (self.http_status or 0) >= 500

    @property
    def route(self) -> str:
        return str(self.attributes.get("http.route") or self.name)

    @property
    def target(self) -> str:
        """A client span's URL path (whom it called), else ''."""
        url = str(self.attributes.get("url.full") or self.attributes.get("http.url") or "")
        return urlsplit(url).path if self.kind == "CLIENT" else ""


def read_spans(trace_dir: Path, *, needle: bytes | None = None) -> Iterator[Span]:
    """Every span in the folder's ``*.jsonl`` files, file by file, line by line.

    ``needle`` skips lines that do not contain it before parsing (a trace id: fast look-up)."""
    for path in sorted(trace_dir.glob("*.jsonl")):
        with path.open("rb") as fh:
            for line in fh:
                if needle is not None and needle not in line:
                    continue
                try:
                    raw = orjson.loads(line)
                    yield Span(
                        raw["trace_id"], raw["span_id"], raw.get("parent_span_id"), raw["name"],
                        raw.get("service") or path.stem, raw.get("kind", ""),
                        int(raw["start_ns"]), int(raw["end_ns"]), raw.get("status", "UNSET"),
                        raw.get("attributes") or {},
                    )  # fmt: skip
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut by a crash, or not a span: skip, never stop


@dataclass
class TraceSummary:
    """One trace, in the few numbers a list needs."""

    trace_id: str
    root: Span | None = None
    start_ns: int = 0
    end_ns: int = 0
    spans: int = 0
    errors: int = 0
    services: set[str] = field(default_factory=set)

    @property
    def duration_ms(self) -> float:
        if self.root is not None:
            return self.root.duration_ms
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True)
class TraceFilter:
    service: str | None = None  # some span of the trace is this service's
    route: str | None = None  # a regex on the root span's route or name
    errors_only: bool = False
    status: str | None = None  # a regex on the root span's HTTP status: 401, 5..
    min_ms: float = 0.0
    since_ns: int = 0
    until_ns: int | None = None

    def keeps(self, t: TraceSummary) -> bool:
        if t.root is None or t.root.kind != "SERVER":
            return False  # unfinished (root not written yet), or a health check's client call
        if self.service and self.service not in t.services:
            return False
        if self.route and not re.search(self.route, t.root.route):
            return False
        if self.errors_only and not t.errors:
            return False
        if self.status and not re.fullmatch(self.status, str(t.root.http_status or "")):
            return False
        if t.duration_ms < self.min_ms:
            return False
        if t.start_ns < self.since_ns:
            return False
        return self.until_ns is None or t.start_ns <= self.until_ns


def summarize(spans: Iterable[Span]) -> dict[str, TraceSummary]:
    traces: dict[str, TraceSummary] = {}
    for span in spans:
        t = traces.get(span.trace_id)
        if t is None:
            t = traces[span.trace_id] = TraceSummary(span.trace_id, start_ns=span.start_ns)
        t.spans += 1
        t.errors += span.error
        t.services.add(span.service)
        t.start_ns = min(t.start_ns, span.start_ns)
        t.end_ns = max(t.end_ns, span.end_ns)
        if span.parent_span_id is None and (t.root is None or span.start_ns < t.root.start_ns):
            t.root = span  # the earliest: a lost client span leaves its callee parentless too
    return traces


def find_traces(trace_dir: Path, where: TraceFilter, limit: int) -> list[TraceSummary]:
    """The slowest ``limit`` traces that pass the filter, slowest first."""
    kept = [t for t in summarize(read_spans(trace_dir)).values() if where.keeps(t)]
    return sorted(kept, key=lambda t: t.duration_ms, reverse=True)[:limit]


def trace_spans(trace_dir: Path, trace_id: str) -> list[Span]:
    return sorted(
        read_spans(trace_dir, needle=trace_id.encode()), key=lambda s: (s.start_ns, s.span_id)
    )


def children(spans: list[Span]) -> dict[str | None, list[Span]]:
    """Spans by parent id; a span whose parent is missing counts as a root (``None``)."""
    ids = {s.span_id for s in spans}
    tree: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in ids else None
        tree.setdefault(parent, []).append(span)
    return tree
