"""The triage commands over span and log files as the services write them (labctl/triage).

Files are written here in the services' own formats (the kit's span exporter, structlog's JSON
lines, Prometheus' JSON logs, a plain-text line), so each filter can be shown to keep and to drop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from labctl import cli
from labctl.config import LabError
from labctl.drills.model import PILLARS, Debrief, NativeStep, load_drills
from labctl.drills.native_steps import Window, check_logs, check_traces, command_line, parse
from labctl.triage import commands
from labctl.triage.logs import LogFilter, last, merged, parse_where
from labctl.triage.spans import TraceFilter, children, find_traces, trace_spans

T0 = 1_796_000_000 * 10**9  # ns


def _span(trace: str, span: str, parent: str | None, name: str, service: str, start_ms: float,
          ms: float, *, kind: str = "SERVER", status: str = "UNSET", **attrs) -> dict:  # fmt: skip
    return {
        "trace_id": trace, "span_id": span, "parent_span_id": parent, "name": name,
        "service": service, "kind": kind, "start_ns": T0 + int(start_ms * 1e6),
        "end_ns": T0 + int((start_ms + ms) * 1e6), "status": status, "attributes": attrs,
    }  # fmt: skip


SLOW = "a" * 32  # a checkout whose payment charge is slow
FAILED = "b" * 32  # a checkout that failed in order
FAST = "c" * 32  # a product listing


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    traces = tmp_path / "traces"
    traces.mkdir()
    gateway = [
        _span(SLOW, "g1", None, "POST /api/checkout", "gateway", 0, 1300, **{
            "http.route": "/api/checkout", "http.status_code": 201}),
        _span(SLOW, "g2", "g1", "POST", "gateway", 5, 1290, kind="CLIENT",
              **{"http.url": "http://127.0.0.1:8002/orders", "http.status_code": 201}),
        _span(FAILED, "g3", None, "POST /api/checkout", "gateway", 2000, 40, **{
            "http.route": "/api/checkout", "http.status_code": 502}),
        _span(FAST, "g4", None, "GET /api/products", "gateway", 3000, 3, **{
            "http.route": "/api/products", "http.status_code": 200}),
        _span("d" * 32, "g5", None, "GET", "gateway", 3500, 1, kind="CLIENT",
              **{"http.url": "http://127.0.0.1:8001/healthz"}),  # a health check: never listed
    ]  # fmt: skip
    order = [
        _span(SLOW, "o1", "g2", "POST /orders", "order", 8, 1285, **{"http.route": "/orders"}),
        _span(SLOW, "o2", "o1", "POST", "order", 10, 1270, kind="CLIENT"),
        _span(FAILED, "o3", None, "POST /orders", "order", 2005, 30, status="ERROR"),
    ]  # fmt: skip
    payment = [_span(SLOW, "p1", "o2", "POST /payments/charge", "payment", 12, 1265)]
    for name, spans in (("gateway", gateway), ("order", order), ("payment", payment)):
        lines = [json.dumps(s) for s in spans]
        (traces / f"{name}.jsonl").write_text("\n".join(lines) + "\n{cut off by a crash\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 / 1e9))
    (logs / "order.log").write_text("\n".join([
        json.dumps({"event": "order_created", "level": "info", "timestamp": f"{t}.100000Z",
                    "service": "order", "trace_id": SLOW, "order_id": "ord_1"}),
        json.dumps({"event": "charge_failed", "level": "error", "timestamp": f"{t}.300000Z",
                    "service": "order", "trace_id": FAILED, "duration_ms": 250.5,
                    "exception": "Traceback...\nTimeoutError: charge timed out"}),
        "INFO: a line that is not JSON",
    ]) + "\n")  # fmt: skip
    (logs / "prometheus.log").write_text(
        json.dumps(
            {"caller": "main.go", "level": "warn", "msg": "rule evaluation slow", "ts": f"{t}.200Z"}
        )
        + "\n"
    )
    return tmp_path


def test_traces_are_listed_slowest_first_and_each_filter_drops_what_it_should(lab: Path) -> None:
    every = find_traces(lab / "traces", TraceFilter(), 10)
    assert [t.trace_id for t in every] == [SLOW, FAILED, FAST]  # not the health check
    assert every[0].services == {"gateway", "order", "payment"} and every[0].spans == 5
    pick = {
        "service": TraceFilter(service="payment"),
        "route": TraceFilter(route="^/api/checkout$"),
        "errors": TraceFilter(errors_only=True),
        "min_ms": TraceFilter(min_ms=1000),
        "since": TraceFilter(since_ns=T0 + 2_500 * 10**6),
        "status": TraceFilter(status="5.."),
        "status 2xx": TraceFilter(status="20."),
    }
    found = {k: [t.trace_id for t in find_traces(lab / "traces", f, 10)] for k, f in pick.items()}
    assert found == {
        "service": [SLOW], "route": [SLOW, FAILED], "errors": [FAILED], "min_ms": [SLOW],
        "since": [FAST], "status": [FAILED], "status 2xx": [SLOW, FAST],
    }  # fmt: skip
    assert [t.trace_id for t in find_traces(lab / "traces", TraceFilter(), 1)] == [SLOW]


def test_one_trace_is_a_tree_across_the_services_files(lab: Path, capsys) -> None:
    spans = trace_spans(lab / "traces", SLOW)
    tree = children(spans)
    assert [s.span_id for s in tree[None]] == ["g1"]
    assert [s.span_id for s in tree["o2"]] == ["p1"]  # order's client span -> payment's server
    assert cli.main(["trace", SLOW, "--lab-dir", str(lab)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    charge = next(line for line in lines if "POST /payments/charge" in line)
    gateway = next(line for line in lines if "POST /api/checkout" in line)
    assert "payment" in charge and "1265.0 ms" in charge
    assert len(charge) - len(charge.lstrip(" │├└─")) > len(gateway) - len(gateway.lstrip(" │├└─"))
    assert "POST /orders" in out and "/orders" in out  # the client span shows whom it called
    assert cli.main(["trace", "f" * 32, "--lab-dir", str(lab)]) == 1  # unknown: an error


def test_the_traces_command_prints_whole_trace_ids(lab: Path, capsys) -> None:
    assert cli.main(["traces", "--lab-dir", str(lab), "--errors"]) == 0
    out = capsys.readouterr().out
    assert FAILED in out and SLOW not in out
    assert cli.main(["traces", "--lab-dir", str(lab), "--service", "nobody"]) == 1


def test_logs_merge_the_components_in_time_order_and_filter(lab: Path, capsys) -> None:
    files = {"order": lab / "logs" / "order.log", "prometheus": lab / "logs" / "prometheus.log"}
    every = last(merged(files), LogFilter(), 0)
    assert [line.event for line in every] == [
        "order_created", "rule evaluation slow", "charge_failed", "INFO: a line that is not JSON",
    ]  # fmt: skip
    assert [line.level for line in every][:3] == ["info", "warning", "error"]
    assert [line.event for line in last(merged(files), LogFilter(level="warning"), 0)] == [
        "rule evaluation slow", "charge_failed",
    ]  # fmt: skip
    assert [line.event for line in last(merged(files), LogFilter(trace_id=FAILED), 0)] == [
        "charge_failed"
    ]
    assert [line.event for line in last(merged(files), LogFilter(event="^order_"), 0)] == [
        "order_created"
    ]
    assert len(last(merged(files), LogFilter(), 2)) == 2
    by_field = LogFilter(where=parse_where(["order_id=ord_.*", "service=order"]))
    assert [line.event for line in last(merged(files), by_field, 0)] == ["order_created"]
    assert last(merged(files), LogFilter(where=parse_where(["order_id=ord_"])), 0) == []  # whole
    assert [line.event for line in last(merged(files), LogFilter(min_ms=200), 0)] == [
        "charge_failed"
    ]
    assert last(merged(files), LogFilter(min_ms=300), 0) == []
    with pytest.raises(ValueError, match="FIELD=REGEX"):
        parse_where(["status"])
    assert cli.main(["logs", "order", "--lab-dir", str(lab), "--level", "error"]) == 0
    out = capsys.readouterr().out
    assert "charge_failed" in out and "TimeoutError: charge timed out" in out
    assert "order_created" not in out and "Traceback" not in out  # the exception's last line


def test_times_read_as_a_user_writes_them() -> None:
    now = 1_800_000_000.0
    assert commands.parse_time("15m", now) == now - 900
    assert commands.parse_time("2h", now) == now - 7200
    assert commands.parse_time("2026-12-01T12:00:00Z") == 1796126400.0
    assert commands.parse_time(None) is None
    with pytest.raises(cli.LabError, match="not a time"):
        commands.parse_time("yesterday")


# ------------------------------------------------------------- a debrief's native steps


WINDOW = Window(start=T0 / 1e9 - 1, end=T0 / 1e9 + 10)


def step(pillar: str, run: str, **expect) -> NativeStep:
    return NativeStep(pillar=pillar, run=run, finds="what the debrief promises", expect=expect)


def test_a_native_trace_step_finds_what_it_says_and_fails_when_it_does_not(lab: Path) -> None:
    slow_charge = {"service": "payment", "name": "^POST /payments/charge$", "min_ms": 1000}
    ok, found = check_traces(step("traces", "labctl traces --route '^/api/checkout'",
                                  span=slow_charge), lab, WINDOW)  # fmt: skip
    assert ok, found
    assert SLOW in found  # the slowest trace is the one it looked into
    for expect in (
        {"span": {**slow_charge, "min_ms": 2000}},  # no charge that slow
        {"span": {**slow_charge, "error": True}},  # the slow charge did not fail
        {"min_count": 3},  # only two checkouts
        {"max_count": 0},  # "nothing" is not what is there
    ):
        ok, found = check_traces(step("traces", "labctl traces --route '^/api/checkout'",
                                      **expect), lab, WINDOW)  # fmt: skip
        assert not ok, (expect, found)
    failed = {"service": "order", "error": True}
    assert check_traces(step("traces", "labctl traces --status '5..'", span=failed), lab, WINDOW)[0]
    late = Window(start=T0 / 1e9 + 5, end=T0 / 1e9 + 10)  # the window is the run's, not all time
    assert not check_traces(step("traces", "labctl traces"), lab, late)[0]


def test_a_native_log_step_counts_the_lines_the_command_prints(lab: Path) -> None:
    assert check_logs(step("logs", "labctl logs order --level error"), lab, WINDOW) == (
        True, "1 line(s) (expected ≥ 1)",
    )  # fmt: skip
    assert not check_logs(step("logs", "labctl logs order --level error", max_count=0), lab,
                          WINDOW)[0]  # fmt: skip
    assert not check_logs(step("logs", "labctl logs order --where 'status=5..'"), lab, WINDOW)[0]
    with pytest.raises(LabError, match="not a valid command"):
        parse(step("logs", "labctl logs --no-such-option"), lab, WINDOW)


def test_every_drill_has_a_native_step_per_pillar_that_the_commands_accept(tmp_path: Path) -> None:
    for drill in load_drills().values():
        assert {s.pillar for s in drill.debrief.native} == set(PILLARS), drill.id
        for native in drill.debrief.native:
            if native.pillar != "metrics":
                parse(native, tmp_path, WINDOW)  # raises on an option the command lacks
                assert command_line(native, WINDOW).startswith(native.run + " --since ")


def test_a_debrief_without_a_pillar_or_with_a_misfiled_step_is_refused() -> None:
    metrics = {"pillar": "metrics", "run": "up", "finds": "x"}
    traces = {"pillar": "traces", "run": "labctl traces", "finds": "x"}
    logs = {"pillar": "logs", "run": "labctl logs", "finds": "x"}
    Debrief(summary="s", evidence=[EVIDENCE], native=[metrics, traces, logs])
    for native, why in (
        ([metrics, traces, traces], "no native step for logs"),
        ([metrics, {**traces, "run": "labctl logs"}, logs], "runs `labctl traces"),
        ([metrics, {**traces, "run": "labctl traces --since 5m"}, logs], "the run's"),
        ([{**metrics, "run": "labctl traces"}, traces, logs], "PromQL"),
        ([metrics, {**logs, "expect": {"top": {"service": "x"}}}, traces], "metrics steps"),
    ):
        with pytest.raises(ValidationError, match=why):
            Debrief(summary="s", evidence=[EVIDENCE], native=native)


EVIDENCE = {"kind": "promql", "where": "Prometheus", "what": "up"}
