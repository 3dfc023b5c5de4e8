"""``labctl traces|trace|exemplars|logs``: triage the native lab from a terminal, read-only.

    labctl traces --service payment --min-ms 500 --since 15m   the slowest matching traces
    labctl trace <trace id>                                     one trace as a tree
    labctl exemplars 'http_request_duration_seconds_bucket{service="gateway"}'
                                                                worst exemplars -> their trees
    labctl logs order --level warning --since 10m               merged, filtered, pretty

They read the lab's own files (``LAB_DIR``/traces, ``LAB_DIR``/logs) and Prometheus' API; no
server, no copy of the data. docs/triage.md walks through a drill with them.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from labctl.config import COMPONENTS, HTTP_TIMEOUT, LabError, lab_dir
from labctl.native.lab import NativeLab
from labctl.triage import logs as logfiles
from labctl.triage.spans import (
    Span,
    TraceFilter,
    TraceSummary,
    children,
    find_traces,
    trace_spans,
)

# Piped or captured output is not cut to 80 columns: a trace id must survive `| grep`.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_LEVEL_STYLE = {"debug": "dim", "warning": "yellow", "error": "bold red", "critical": "bold red"}


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """``15m`` (that long ago), ``2026-12-01T12:00:00Z`` or a unix time; None for None."""
    if not text:
        return None
    now = time.time() if now is None else now
    if m := _AGO.match(text.strip()):
        return now - float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise LabError(f"{text!r} is not a time: use 15m, 2h, an ISO time or a unix time") from None


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%H:%M:%S")


def _trace_dir(args: argparse.Namespace) -> Path:
    path = Path(args.lab_dir or lab_dir()) / "traces"
    if not path.is_dir() or not any(path.glob("*.jsonl")):
        raise LabError(f"no span files in {path}: start the lab (`make up`) and send traffic")
    return path


# ---------------------------------------------------------------------------- traces


def select_traces(args: argparse.Namespace) -> list[TraceSummary]:
    """The traces ``labctl traces`` lists for these arguments, slowest first."""
    since = parse_time(args.since)
    until = parse_time(args.until)
    where = TraceFilter(
        service=args.service, route=args.route, errors_only=args.errors, status=args.status,
        min_ms=args.min_ms,
        since_ns=int((since or 0) * 1e9), until_ns=None if until is None else int(until * 1e9),
    )  # fmt: skip
    return find_traces(_trace_dir(args), where, args.limit)


def cmd_traces(args: argparse.Namespace) -> int:
    found = select_traces(args)
    if not found:
        console.print("No trace matches.")
        return 1
    table = Table(box=None)
    table.add_column("trace id", no_wrap=True, min_width=32)
    for name in ("start", "ms", "root", "status", "spans", "services"):
        table.add_column(name, no_wrap=True)
    for t in found:
        root = t.root
        assert root is not None  # the filter keeps only traces with a root
        status = f"{root.http_status or ''}" + (f" {t.errors} err" if t.errors else "")
        table.add_row(
            t.trace_id, _clock(t.start_ns / 1e9), f"{t.duration_ms:.1f}",
            f"{root.service} {escape(root.route)}", status, str(t.spans),
            ",".join(sorted(t.services)),
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(found)} trace(s), slowest first; one as a tree: labctl trace <trace id>")
    return 0


def span_label(span: Span, root_start: int) -> str:
    offset = (span.start_ns - root_start) / 1e6
    name = escape(span.name) + (f" [dim]{escape(span.target)}[/]" if span.target else "")
    text = f"[bold]{name}[/] [cyan]{span.service}[/] {span.duration_ms:.1f} ms"
    text += f" [dim]+{offset:.1f} ms[/]"
    if span.http_status:
        text += f" {span.http_status}"
    if span.error:
        text += " [bold red]ERROR[/]"
    return text


def render_tree(spans: list[Span]) -> Tree:
    by_parent = children(spans)
    roots = by_parent.get(None, [])
    start = min(s.start_ns for s in spans)
    top = Tree(f"trace {spans[0].trace_id}: {len(spans)} spans, {len(roots)} root(s)")

    def add(node: Tree, span: Span, depth: int) -> None:
        branch = node.add(span_label(span, start))
        if depth < 64:  # a parent loop in broken data cannot recurse forever
            for child in by_parent.get(span.span_id, []):
                add(branch, child, depth + 1)

    for root in roots:
        add(top, root, 0)
    return top


def spans_of(args: argparse.Namespace, trace_id: str) -> list[Span]:
    return trace_spans(_trace_dir(args), trace_id.lower())


def cmd_trace(args: argparse.Namespace) -> int:
    spans = spans_of(args, args.trace_id)
    if not spans:
        raise LabError(f"no spans of trace {args.trace_id} in the lab's span files")
    console.print(render_tree(spans))
    return 0


# ------------------------------------------------------------------------- exemplars


def cmd_exemplars(args: argparse.Namespace) -> int:
    lab = NativeLab(args.lab_dir or lab_dir(), out=lambda _line: None)
    try:
        prometheus = lab.urls.get("prometheus")
    finally:
        lab.close()
    if not prometheus:
        raise LabError("Prometheus of the lab is not running: `make up` starts it")
    now = time.time()
    params = {"query": args.query, "start": parse_time(args.since, now), "end": now}
    try:
        body = httpx.get(
            f"{prometheus}/api/v1/query_exemplars", params=params, timeout=HTTP_TIMEOUT,
            trust_env=False,
        ).json()  # fmt: skip
    except (httpx.HTTPError, ValueError) as exc:
        raise LabError(f"Prometheus did not answer: {exc}") from None
    if body.get("status") != "success":
        raise LabError(f"Prometheus refused the query: {body.get('error', body)}")
    found = [
        (float(e["value"]), e["labels"].get("trace_id", ""), series["seriesLabels"])
        for series in body["data"]
        for e in series["exemplars"]
        if e["labels"].get("trace_id")
    ]
    if not found:
        console.print("No exemplar with a trace id in that window (is exemplar storage on?).")
        return 1
    found.sort(key=lambda f: f[0], reverse=True)
    table = Table(box=None)
    table.add_column("value", no_wrap=True)
    table.add_column("trace id", no_wrap=True, min_width=32)
    table.add_column("series")
    for value, trace_id, labels in found[: args.top]:
        keep = {k: v for k, v in labels.items() if k in ("service", "route", "method", "le")}
        table.add_row(f"{value:.3f}", trace_id, escape(str(keep)))
    console.print(table)
    spans = trace_spans(_trace_dir(args), found[0][1])
    if spans:
        console.print(render_tree(spans))
    return 0


# ------------------------------------------------------------------------------ logs


def format_line(line: logfiles.LogLine, many: bool) -> str:
    style = _LEVEL_STYLE.get(line.level, "")
    stamp = datetime.fromtimestamp(line.ts).strftime("%H:%M:%S.%f")[:-3] if line.ts else ""
    level = f"[{style}]{line.level:<7}[/]" if style else f"{line.level:<7}"
    who = f"[cyan]{line.component:<12}[/] " if many else ""
    extra = " ".join(
        f"{k}={v}" for k, v in line.fields.items() if k not in ("service", "exception", "span_id")
    )
    text = f"{stamp} {level} {who}{escape(line.event)}"
    if extra:
        text += f" [dim]{escape(extra)}[/]"
    if exc := str(line.fields.get("exception") or "").strip():  # its last line; --json: all
        text += f"\n    [red]{escape(exc.splitlines()[-1])}[/]"
    return text


def log_files(args: argparse.Namespace) -> dict[str, Path]:
    """The log file of each component asked for (all by default) that exists."""
    names = args.components or list(COMPONENTS)
    unknown = sorted(set(names) - set(COMPONENTS))
    if unknown:
        raise LabError(f"unknown component(s) {', '.join(unknown)}; one of {', '.join(COMPONENTS)}")
    lab = NativeLab(args.lab_dir or lab_dir(), out=lambda _line: None)
    files = {n: lab.log_file(n) for n in names if lab.log_file(n).exists()}
    lab.close()
    return files


def log_filter(args: argparse.Namespace) -> logfiles.LogFilter:
    try:
        where = logfiles.parse_where(args.where)
    except (ValueError, re.error) as exc:
        raise LabError(str(exc)) from None
    return logfiles.LogFilter(
        level=args.level, event=args.event, trace_id=args.trace,
        since=parse_time(args.since) or 0.0, until=parse_time(args.until),
        where=where, min_ms=args.min_ms,
    )  # fmt: skip


def select_logs(args: argparse.Namespace) -> list[logfiles.LogLine]:
    """The lines ``labctl logs`` prints for these arguments (without --follow)."""
    return logfiles.last(logfiles.merged(log_files(args)), log_filter(args), args.lines)


def cmd_logs(args: argparse.Namespace) -> int:
    files = log_files(args)
    if not files:
        console.print(f"No logs in {Path(args.lab_dir or lab_dir()) / 'logs'} yet.")
        return 0
    where = log_filter(args)
    many = len(files) > 1

    def show(line: logfiles.LogLine) -> None:
        if args.json:
            console.out(line.raw, highlight=False)
        else:
            console.print(format_line(line, many))

    for line in select_logs(args):
        show(line)
    if args.follow:
        _follow(files, where, show)
    return 0


def _follow(files: dict[str, Path], where: logfiles.LogFilter, show) -> None:
    """New lines as they are written, until Ctrl-C (interactive: no bound on purpose)."""
    offsets = {n: p.stat().st_size for n, p in files.items()}
    last_ts = dict.fromkeys(files, 0.0)
    pace = threading.Event()
    try:
        while True:
            for name, path in files.items():
                size = path.stat().st_size if path.exists() else 0
                if size < offsets[name]:
                    offsets[name] = 0  # the file was truncated (make clean, rotation)
                if size > offsets[name]:
                    with path.open("rb") as fh:
                        fh.seek(offsets[name])
                        chunk = fh.read().decode("utf-8", "replace")
                    offsets[name] = size
                    for text in chunk.splitlines():
                        line = logfiles.parse(name, text, last_ts[name])
                        last_ts[name] = line.ts
                        if where.keeps(line):
                            show(line)
            pace.wait(0.5)
    except KeyboardInterrupt:
        return


# ---------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lab-dir", help="the lab's runtime folder (default: LAB_DIR or var/lab)")
        p.add_argument("--since", help="15m, 2h, an ISO time or a unix time")
        p.add_argument("--until", help="same forms as --since")

    traces = sub.add_parser("traces", help="list traces: --service --route --errors --min-ms")
    common(traces)
    traces.add_argument("--service", help="traces with a span of this service")
    traces.add_argument("--route", help="a regex on the root span's route")
    traces.add_argument("--errors", action="store_true", help="only traces with a failed span")
    traces.add_argument("--status", help="a regex on the root's HTTP status: 401, 5..")
    traces.add_argument("--min-ms", type=float, default=0.0, help="root span at least this long")
    traces.add_argument("--limit", type=int, default=20, help="how many, slowest first")
    traces.set_defaults(func=cmd_traces)

    trace = sub.add_parser("trace", help="one trace as a tree of spans")
    trace.add_argument("trace_id")
    trace.add_argument("--lab-dir", help="the lab's runtime folder (default: LAB_DIR or var/lab)")
    trace.set_defaults(func=cmd_trace)

    ex = sub.add_parser("exemplars", help="a histogram query -> the traces behind its worst values")
    ex.add_argument("query", help='e.g. http_request_duration_seconds_bucket{service="gateway"}')
    ex.add_argument("--lab-dir", help="the lab's runtime folder (default: LAB_DIR or var/lab)")
    ex.add_argument("--since", default="15m", help="window start (default 15m)")
    ex.add_argument("--top", type=int, default=5, help="how many exemplars to list")
    ex.set_defaults(func=cmd_exemplars, until=None)

    logs = sub.add_parser("logs", help="the components' logs, merged in time order, filtered")
    common(logs)
    logs.add_argument("components", nargs="*", help=f"any of: {' '.join(COMPONENTS)}")
    logs.add_argument("-n", "--lines", type=int, default=20, help="the last N matches (0: all)")
    logs.add_argument("--level", choices=logfiles.LEVELS, help="this level or worse")
    logs.add_argument("--event", help="a regex on the event / message")
    logs.add_argument("--trace", help="only lines of this trace id")
    logs.add_argument(
        "--where", action="append", metavar="FIELD=REGEX",
        help="a field's whole value matches: status=5.. (repeat for more)",
    )  # fmt: skip
    logs.add_argument("--min-ms", type=float, help="request lines at least this slow")
    logs.add_argument("--json", action="store_true", help="the raw JSON lines")
    logs.add_argument("-f", "--follow", action="store_true", help="then follow (Ctrl-C ends)")
    logs.set_defaults(func=cmd_logs)
