"""One drill run, start to end: the runner, then its journal and report (with a blind answer,
if one was given)."""

from __future__ import annotations

from typing import Any

from labctl.drills.blind import attach_answer, read_current, sealed_dir, write_current
from labctl.drills.common import DRILLS_VAR, say
from labctl.drills.model import Drill
from labctl.drills.report import write_report
from labctl.drills.runner import DrillRunner, RunResult
from labctl.drills.target import DrillLab
from labctl.native.lab import NativeLab


def finish(result: RunResult) -> None:
    """Journal and report; a blind run also takes the answers given so far. An unanswered
    blind run's journal and report are sealed (labctl.drills.blind.sealed_dir) until the
    answer: they name the faults."""
    journal = result.journal
    where = result.run_dir
    state = read_current()
    if state and state.run_id == result.run_dir.name:
        attach_answer(journal, state, result.drill)
        state.finished = True
        state.first_page_at = journal.first_page()
        write_current(state)
        if not state.closed:
            where = sealed_dir(state.run_id)
            where.mkdir(parents=True, exist_ok=True)
    journal.write(where)
    write_report(where, result.drill, journal, result.series)


def execute(
    lab: NativeLab | DrillLab,
    drill: Drill,
    run_id: str,
    *,
    blind: bool = False,
    wait_quiet: bool = False,
    end_when_settled: bool = False,
    out: Any = say,
) -> RunResult:
    run_dir = DRILLS_VAR / run_id
    runner = DrillRunner(
        lab, drill, run_dir, out=out, blind=blind, wait_quiet=wait_quiet,
        end_when_settled=end_when_settled,
    )  # fmt: skip
    try:
        if not blind:
            out(f"Drill {drill.id}: {drill.title} ({drill.difficulty}); run {run_id}")
            out(f"  load: {drill.load.shape}, {drill.load.users} users, {drill.load.duration:.0f}s")
        result = runner.run()
        finish(result)
    finally:
        runner.close()
    if not blind:
        reasons = ": " + "; ".join(result.failures) if result.failures else ""
        out(f"  verdict {result.verdict}{reasons}")
        out(f"  journal: {run_dir / 'journal.json'}\n  report:  {run_dir / 'report.md'}")
    return result
