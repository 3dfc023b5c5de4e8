"""A drill's verdict, from what fired and when: pure functions of the drill, the
alerts and the data check."""

from __future__ import annotations

from collections.abc import Sequence

from labctl.drills.journal import DataCheck, ExpectedResult, StepResult
from labctl.drills.model import Drill
from labctl.drills.prometheus import AlertRecord, AlertTracker


def matches(record: AlertRecord, name: str, labels: dict[str, str]) -> bool:
    return record.name == name and all(record.labels.get(k) == v for k, v in labels.items())


def evaluate(
    drill: Drill,
    tracker: AlertTracker,
    t0: float,
    data: DataCheck,
    interrupted: bool,
    error: str | None,
    native: Sequence[StepResult] = (),
) -> tuple[str, list[str], list[ExpectedResult]]:
    """PASS/FAIL with reasons, and one row per expected alert (fired? after how long?).

    A native step of the debrief that did not find what it says fails the run too: the
    debrief is part of what a drill promises."""
    failures: list[str] = []
    rows = []
    start = t0 + (drill.fault_start or 0)
    fired = tracker.fired()
    for expected in drill.expected_alerts:
        hits = [r for r in fired if matches(r, expected.alert, expected.labels)]
        hits = [r for r in hits if (r.fired_at or 0) >= start - 5]
        detect = min((r.fired_at or 0) for r in hits) - start if hits else None
        ok = detect is not None and detect <= expected.within
        rows.append(
            ExpectedResult(
                alert=expected.alert,
                labels=expected.labels,
                within=expected.within,
                detected_after=None if detect is None else round(max(detect, 0.0), 1),
                ok=ok,
            )
        )
        if not ok:
            label = expected.alert + (f"{expected.labels}" if expected.labels else "")
            if detect is None:
                failures.append(f"{label} did not fire")
            else:
                failures.append(f"{label} fired after {detect:.0f}s > {expected.within:.0f}s")
    for record in fired:
        if drill.is_silent(record.name):
            failures.append(f"forbidden alert fired: {record.name} {_brief(record.labels)}")
    if drill.cascade:
        failures += _cascade_failures(drill, fired, start)
    if data.ok is False:
        failures += [f"data check: {p}" for p in data.problems]
    failures += [
        f"debrief step ({step.pillar}) `{step.command}` found {step.found}"
        for step in native
        if not step.ok
    ]
    if interrupted:
        failures.append("interrupted")
    if error:
        failures.append(f"error: {error}")
    return ("PASS" if not failures else "FAIL"), failures, rows


def _cascade_failures(drill: Drill, fired: Sequence[AlertRecord], start: float) -> list[str]:
    """A cascade drill teaches that the loudest first alert is on a victim: it must be."""
    after = [r for r in fired if r.fired_at and r.fired_at >= start - 5]
    if not after:
        return ["cascade: no alert fired"]
    first = min(after, key=lambda r: r.fired_at or 0.0)
    if first.labels.get("service") == drill.answer.service:
        return [
            f"cascade: the first alert, {first.name} {_brief(first.labels)}, names the answer's "
            f"service {drill.answer.service}, not a victim"
        ]
    return []


EVIDENCE_SECONDS = 75.0
"""The least fault time a run cut short keeps: a debrief step's rate over [1m] needs a whole
minute of fault, plus one 15 s step (cut at 45 s, cpu-burn's two burning threads read 0.756 of
the core its step asks for)."""


def settled(drill: Drill, tracker: AlertTracker, t0: float, elapsed: float) -> bool:
    """Can the load end now without changing what the alerts say? Every fault has started,
    every expected alert has fired within its bound, and EVIDENCE_SECONDS of fault lie behind.

    A drill that expects no alert is never settled early: its whole load is the check; nor is
    a drill without faults, whose load's shape is the incident (traffic-spike's page fires
    seconds into its spike, and the debrief reads the whole spike). What a run cut short no
    longer sees is an unexpected alert that would have fired later."""
    if not drill.expected_alerts or not drill.timeline:
        return False
    if any(step.at > elapsed for step in drill.timeline):
        return False
    if elapsed < (drill.fault_start or 0.0) + EVIDENCE_SECONDS:
        return False
    _, _, rows = evaluate(drill, tracker, t0, DataCheck(ok=None), False, None)
    return all(row.ok for row in rows)


def time_to_detect(drill: Drill, tracker: AlertTracker, t0: float) -> float | None:
    """Seconds from the first fault to the first page (None: nothing paged, or no fault)."""
    if drill.fault_start is None:
        return None
    start = t0 + drill.fault_start
    pages = [r.fired_at for r in tracker.fired() if r.severity == "page" and r.fired_at]
    pages = [p for p in pages if p >= start - 5]
    return round(max(0.0, min(pages) - start), 1) if pages else None


def _brief(labels: dict[str, str]) -> str:
    keep = {k: v for k, v in labels.items() if k in ("service", "peer", "route", "slo")}
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(keep.items())) + "}"
