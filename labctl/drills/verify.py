"""``labctl drill verify``: every drill on its own lab; expected alerts within bound, nothing else
firing, no data lost, and every native step of its debrief finds what it says."""

from __future__ import annotations

import argparse
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from labctl import tables
from labctl.config import SERVICES, LabError, Ports, lab_dir
from labctl.drills.common import DRILLS_VAR, find_drill, new_run_id, say
from labctl.drills.execute import execute
from labctl.drills.model import Drill, load_drills
from labctl.drills.runner import RunResult
from labctl.drills.target import DrillLab, NativeTarget, UrlLab, as_target, in_flight, poll_until
from labctl.native.lab import NativeLab

VERIFY_FIRST = "no-incident"  # first, while no earlier drill can leave a slow-burn window behind
VERIFY_BASELINE = 20.0
"""Seconds of steady load before a verify run's first fault (a drill's own baseline is for a
trainee to see the shop healthy; the alerts' windows need only some traffic before the fault)."""


IDLE_TIMEOUT = 60.0


def wait_idle(target: DrillLab, out: Any) -> None:
    """Until no service serves a request: the last drill's tail (a charge held by a hang
    fault finishes after the load and the fault are gone, with its 5xx) must not land in the
    next drill's fresh Prometheus. Only on a lab verify owns: it has no background load."""
    urls = [target.urls[s] for s in SERVICES if s in target.urls]

    def idle() -> bool:
        return all(not in_flight(url) for url in urls)

    try:
        poll_until(idle, IDLE_TIMEOUT, 0.5, time.sleep, lambda: "")
    except LabError:
        out(f"  note: requests still in flight after {IDLE_TIMEOUT:.0f}s; going on")


def shortened(drill: Drill, baseline: float = VERIFY_BASELINE) -> Drill:
    """The drill as verify runs it: its timeline moved earlier so the first fault comes after
    `baseline` seconds, the load as much shorter. Only a steady load moves (a shape's phases
    are the drill); each fault keeps its length and its distance to the others."""
    shift = (drill.fault_start or 0.0) - baseline
    if drill.load.shape != "steady" or shift <= 0:
        return drill
    timeline = [step.model_copy(update={"at": step.at - shift}) for step in drill.timeline]
    load = drill.load.model_copy(update={"duration": drill.load.duration - shift})
    return drill.model_copy(update={"timeline": timeline, "load": load})


@dataclass
class VerifyRow:
    """One drill's line of the verify table."""

    drill: str
    verdict: str
    failures: list[str] = field(default_factory=list)
    expected: str = "—"
    fired: str = "—"
    detect: str = "—"
    bounds: str = "—"
    data: str = "—"
    steps: str = "—"
    minutes: str = "—"
    run_dir: str = ""

    @classmethod
    def of(cls, drill: Drill, result: RunResult) -> VerifyRow:
        expected = result.journal.expected
        fired = sorted({r.name for r in result.tracker.fired()})
        return cls(
            drill=drill.id,
            verdict=result.verdict,
            failures=list(result.failures),
            expected=", ".join(e.alert for e in expected) or "(none)",
            fired=", ".join(fired) or "(none)",
            detect=", ".join(
                "—" if e.detected_after is None else f"{e.detected_after:.0f}s" for e in expected
            )
            or "—",
            bounds=", ".join(f"{e.within:.0f}s" for e in expected) or "—",
            data="ok" if result.journal.data_check.ok else "FAIL",
            steps=_steps(drill, result),
            run_dir=str(result.run_dir),
        )


def _steps(drill: Drill, result: RunResult) -> str:
    checked = result.journal.native
    text = f"{sum(r.ok for r in checked)}/{len(checked)}"
    if skipped := len(drill.debrief.native) - len(checked):  # a lab given by URLs: no files
        text += f" ({skipped} read the native lab's files)"
    return text


def verify(
    lab: NativeLab | DrillLab, drills: list[Drill], out: Any = say, *, rebuild: bool = True
) -> tuple[bool, list[VerifyRow]]:
    """Run each drill in turn, each on a clean slate; the table rows and overall ok.

    A drill that leaves the lab broken (a component gone that should run) is reported as an
    ERROR, and the lab is rebuilt before the next drill (when `rebuild`: a lab verify started
    itself), so one broken drill does not fail every drill after it. A drill interrupted
    (Ctrl-C, SIGTERM: the runner cleans up) ends the whole verify: that is what was asked."""
    target = as_target(lab)
    # A native lab verify owns starts each drill with empty monitoring, instead of waiting for
    # the last drill's alerts and burn windows to wear off (minutes after an SLO page). The
    # first drill too: the lab folder is reused, and a Prometheus started on the last verify's
    # data shows its alerts as series for five minutes (the lookback; nothing marked them stale).
    fresh = rebuild and isinstance(target, NativeTarget)
    rows: list[VerifyRow] = []
    for drill in drills:
        out(f"== {drill.id}")
        began = time.monotonic()
        try:
            if fresh:
                wait_idle(target, out)
                target.fresh_monitoring()
            result = execute(
                lab, shortened(drill), f"verify-{new_run_id()}-{drill.id}",
                wait_quiet=not fresh, end_when_settled=True, out=out,
            )  # fmt: skip
        except LabError as exc:
            row = VerifyRow(drill.id, "ERROR", [f"the lab is not usable: {exc}"])
        else:
            row = VerifyRow.of(drill, result)
            row.minutes = f"{(time.monotonic() - began) / 60:.1f}"
            if result.journal.interrupted:
                rows.append(row)
                out("  interrupted: no more drills")
                break
        rows.append(row)
        if missing := target.unreachable():
            message = f"the lab broke during this drill ({', '.join(missing)} not running)"
            out(f"  {message}")
            row.verdict = "ERROR"
            row.failures.append(message)
            if not rebuild:
                break
            out("  rebuilding the lab before the next drill")
            target.rebuild()
    return all(r.verdict == "PASS" for r in rows), rows


def table(rows: list[VerifyRow]) -> str:
    header = ("drill", "expected", "fired", "time to detect", "bound", "data", "debrief steps",
              "verdict", "minutes")  # fmt: skip
    cells = (
        (r.drill, r.expected, r.fired, r.detect, r.bounds, r.data, r.steps, r.verdict, r.minutes)
        for r in rows
    )
    lines = [tables.markdown(header, cells)]
    lines += [f"- {row.drill}: {failure}" for row in rows for failure in row.failures]
    return "\n".join(lines)


def verify_order(drills: dict[str, Drill], only: list[str] | None) -> list[Drill]:
    ids = only or list(drills)
    for drill_id in ids:
        find_drill(drills, drill_id)
    ids = sorted(ids, key=lambda i: (i != VERIFY_FIRST, list(drills).index(i)))
    return [drills[i] for i in ids]


def cmd_verify(args: argparse.Namespace) -> int:
    # SIGTERM outside a drill (starting the lab, between drills) ends verify the way Ctrl-C
    # does, so the lab it started is stopped; inside a drill the runner's own handler takes
    # over (labctl.drills.runner.interruptible), cleans up, and verify runs no more drills.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _verify(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _verify(args: argparse.Namespace) -> int:
    drills = load_drills()
    chosen = verify_order(drills, [i for i in (args.only or "").split(",") if i] or None)
    started = time.monotonic()
    lab: NativeLab | DrillLab
    if args.lab:
        lab = UrlLab.load(args.lab)
        stop_after = False
    elif args.use_running:
        lab = NativeLab(lab_dir(), out=say)
        stop_after = False
    else:
        # Drills drive their own load, so the lab's background Locust stays off: the load of a
        # verify run is exactly the drill's. Free ports: a `make up` lab may run beside it.
        lab = NativeLab(DRILLS_VAR / "lab", Ports.any_free(), load=False, out=say)
        say(f"Starting a native lab for verify in {lab.runtime_dir}")
        lab.up()
        stop_after = not args.keep_lab
    try:
        ok, rows = verify(lab, chosen, rebuild=not (args.lab or args.use_running))
    finally:
        if stop_after and isinstance(lab, NativeLab):
            lab.down()
        lab.close()
    text = table(rows)
    say("\n" + text)
    summary = DRILLS_VAR / "verify-summary.md"
    summary.write_text(text + "\n", encoding="utf-8")
    minutes = (time.monotonic() - started) / 60
    each = minutes / max(1, len(rows))
    say(f"\n{sum(r.verdict == 'PASS' for r in rows)}/{len(rows)} drills passed "
         f"in {minutes:.1f} min ({each:.1f} a drill); table in {summary}")  # fmt: skip
    return 0 if ok else 1
