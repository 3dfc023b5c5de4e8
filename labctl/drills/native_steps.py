"""A debrief's native steps, run for real: the PromQL, ``labctl traces`` and ``labctl logs`` a
trainee can follow on the native lab, checked against the lab after the drill.

Each step says what it finds (``expect``); after a run, ``check_steps`` runs every step over the
run's window with the same code the commands run (their argument parser and selection
functions), so a debrief that points at nothing fails ``verify`` instead of a trainee.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import BaseModel

from labctl.config import LabError
from labctl.drills.journal import StepResult
from labctl.drills.model import Drill, NativeStep, SpanLike
from labctl.drills.prometheus import Prometheus
from labctl.triage import commands as triage
from labctl.triage.spans import Span

AFTER_FAULT = 60.0
"""Seconds after the last fault ends that still belong to a run's window (restarts, replays)."""
METRICS_STEP = 15.0


class Window(BaseModel):
    """The part of a run the steps look at (unix times)."""

    start: float
    end: float

    def iso(self, at: float) -> str:
        return datetime.fromtimestamp(at).isoformat(timespec="seconds")

    def options(self) -> str:
        return f"--since {self.iso(self.start)} --until {self.iso(self.end)}"


def window_of(drill: Drill, t0: float, load_end: float) -> Window:
    """From the first fault to a minute after the last (the whole load for a drill without)."""
    if drill.fault_start is None or drill.fault_end is None:
        return Window(start=t0, end=load_end)
    end = min(load_end, t0 + drill.fault_end + AFTER_FAULT)
    return Window(start=t0 + drill.fault_start, end=end)


def command_line(step: NativeStep, window: Window) -> str:
    """What the trainee types for this run (a PromQL step is the expression itself)."""
    if step.pillar == "metrics":
        return step.run
    return f"{step.run} {window.options()}"


def parse(step: NativeStep, lab_dir: Path, window: Window) -> argparse.Namespace:
    """The step's command through ``labctl``'s own parser, over the run's window."""
    parser = argparse.ArgumentParser(prog="labctl", exit_on_error=False)
    triage.add_commands(parser.add_subparsers(dest="command", required=True))
    argv = [
        *shlex.split(step.run)[1:],
        "--lab-dir", str(lab_dir), "--since", str(window.start), "--until", str(window.end),
    ]  # fmt: skip
    try:
        return parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise LabError(f"`{step.run}` is not a valid command: {exc}") from None


def _counted(count: int, step: NativeStep, what: str) -> tuple[bool, str]:
    expect = step.expect
    ok = count >= expect.min_count and (expect.max_count is None or count <= expect.max_count)
    want = f"≥ {expect.min_count}"
    if expect.max_count is not None:
        want += f", ≤ {expect.max_count}"
    return ok, f"{count} {what} (expected {want})"


def _span_matches(span: Span, like: SpanLike) -> bool:
    return (
        span.service == like.service
        and (like.name is None or re.search(like.name, span.name) is not None)
        and span.duration_ms >= like.min_ms
        and (like.error is None or span.error == like.error)
    )


def check_traces(step: NativeStep, lab_dir: Path, window: Window) -> tuple[bool, str]:
    args = parse(step, lab_dir, window)
    found = triage.select_traces(args)
    ok, text = _counted(len(found), step, "trace(s)")
    like = step.expect.span
    if ok and like is not None and found:
        spans = triage.spans_of(args, found[0].trace_id)
        if not any(_span_matches(s, like) for s in spans):
            return False, f"{text}; the slowest, {found[0].trace_id}, has no span like {like}"
        text += f"; the slowest, {found[0].trace_id}, has the {like.service} span"
    return ok, text


def check_logs(step: NativeStep, lab_dir: Path, window: Window) -> tuple[bool, str]:
    args = parse(step, lab_dir, window)
    args.lines = 0  # count them all
    return _counted(len(triage.select_logs(args)), step, "line(s)")


def series_peak(values: list) -> float | None:
    """A series' highest value; NaN (a quantile of a route without requests: no line on a
    graph) is no value, and a series of nothing else has no peak."""
    finite = [x for x in (float(v) for _, v in values) if not math.isnan(x)]
    return max(finite) if finite else None


def check_metrics(step: NativeStep, prom: Prometheus, window: Window) -> tuple[bool, str]:
    try:
        series = prom.query_range(step.run, window.start, window.end, METRICS_STEP, strict=True)
    except httpx.HTTPError as exc:
        return False, f"Prometheus did not answer: {exc}"
    except ValueError as exc:
        return False, str(exc)
    ok, text = _counted(len(series), step, "series")
    peaks = sorted(
        ((peak, s["metric"]) for s in series if (peak := series_peak(s["values"])) is not None),
        key=lambda p: p[0],
        reverse=True,
    )
    if not ok or not peaks:
        return ok, text
    value, labels = peaks[0]
    text += f"; highest {value:.3g} on {labels}"
    if any(labels.get(k) != v for k, v in step.expect.top.items()):
        return False, f"{text}, not on {step.expect.top}"
    if step.expect.min_value is not None and value < step.expect.min_value:
        return False, f"{text} < {step.expect.min_value}"
    return True, text


def check_steps(
    drill: Drill, lab_dir: Path | None, prom: Prometheus, window: Window
) -> list[StepResult]:
    """Every native step of the drill's debrief against the lab, over the run's window.

    Without `lab_dir` (a lab given by URLs) only the PromQL steps run: the trace and log steps
    read the native lab's span and log files (on compose or Kubernetes, Jaeger and Loki hold
    them, and the debrief's Grafana evidence is the way there)."""
    results = []
    for step in drill.debrief.native:
        if lab_dir is None and step.pillar != "metrics":
            continue
        try:
            if step.pillar == "metrics" or lab_dir is None:
                ok, found = check_metrics(step, prom, window)
            elif step.pillar == "traces":
                ok, found = check_traces(step, lab_dir, window)
            else:
                ok, found = check_logs(step, lab_dir, window)
        except LabError as exc:
            ok, found = False, str(exc)
        results.append(
            StepResult(pillar=step.pillar, command=command_line(step, window), ok=ok, found=found)
        )
    return results
