"""Blind mode: a random drill in the background, its name hidden; hints cost points; answers
are scored.

The open blind drill lives in var/drills/current.json (what `hint` and `answer` read back). Its
drill is not named there, nor in the runner's command line or environment: the state holds a
keyed digest of the id (`seal`), and the runner reads the id from its standard input. That keeps
the answer from a glance at `ps` or a file, not from someone who reads this code: the lab runs
on the trainee's own machine.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from labctl.config import REPO_ROOT, SERVICES, LabError, lab_dir
from labctl.drills.common import DRILLS_VAR, command, new_run_id, say
from labctl.drills.journal import Answer, Journal
from labctl.drills.model import CAPACITY, NO_INCIDENT, Drill, load_drills
from labctl.drills.report import write_report
from labctl.drills.scoring import MAX_GUESSES, Guess, Score, is_right, normalise, score
from labctl.drills.target import open_lab
from labctl.native.lab import NativeLab
from services.fault_spec import FAULT_KINDS

CURRENT = DRILLS_VAR / "current.json"


class HintUsed(BaseModel):
    at: float
    cost: int


class GuessMade(BaseModel):
    service: str
    kind: str
    at: float


class BlindState(BaseModel):
    """The open blind drill (var/drills/current.json): what `hint` and `answer` read back."""

    run_id: str
    sealed: str = Field(description="seal(drill id, key): which drill, not readable at a glance")
    key: str
    seed: int | None = None
    started_at: float
    fault_start: float
    pid: int | None = None
    hints: list[HintUsed] = Field(default_factory=list)
    guesses: list[GuessMade] = Field(default_factory=list)
    closed: bool = False
    finished: bool = False
    first_page_at: float | None = None

    def scored(self, drill: Drill, time_to_detect: float | None) -> Score:
        guesses = [Guess(g.service, g.kind, g.at) for g in self.guesses]
        return score(
            guesses,
            drill.answer.service,
            drill.answer.kind,
            clock_start(self, drill),
            time_to_detect,
            [h.cost for h in self.hints],
        )


def seal(drill_id: str, key: str) -> str:
    return hmac.new(key.encode(), drill_id.encode(), hashlib.sha256).hexdigest()


def unseal(state: BlindState, drills: dict[str, Drill]) -> Drill:
    for drill in drills.values():
        if hmac.compare_digest(seal(drill.id, state.key), state.sealed):
            return drill
    raise LabError(f"the blind drill {state.run_id} is none of the drills of this checkout")


def read_current() -> BlindState | None:
    try:
        return BlindState.model_validate_json(CURRENT.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValidationError):
        return None


def write_current(state: BlindState) -> None:
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    tmp = CURRENT.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(CURRENT)


def pick(drills: dict[str, Drill], seed: int | None) -> Drill:
    """A seedable random choice: the same seed gives the same drill (game days, tests)."""
    return drills[random.Random(seed).choice(sorted(drills))]


def cmd_blind(args: argparse.Namespace) -> int:
    state = read_current()
    if state and not state.closed and not args.force:
        raise LabError(
            f"a blind drill is still open: `{command('answer')}` it first "
            f"(or `{command('blind --force')}`)"
        )
    drills = load_drills()
    drill = pick(drills, args.seed)
    lab = open_lab(args.lab, lambda: NativeLab(lab_dir(), out=say))
    try:
        if missing := lab.unreachable():
            raise LabError(
                f"the lab in {lab.where} is not running ({', '.join(missing)} missing): "
                "start it with `make up`"
            )
    finally:
        lab.close()
    run_id = new_run_id(blind=True)
    run_dir = DRILLS_VAR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "runner.log"
    # The drill's id goes to the runner on its standard input, not in its command line.
    argv = [sys.executable, "-m", "labctl", "drill", "run", "--blind"]
    argv += ["--run-id", run_id, "--log", str(log)]
    if args.lab:
        argv += ["--lab", str(Path(args.lab).resolve())]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(f"{drill.id}\n".encode())
    proc.stdin.close()
    key = secrets.token_hex(16)
    started = time.time()
    write_current(
        BlindState(
            run_id=run_id,
            sealed=seal(drill.id, key),
            key=key,
            seed=args.seed,
            started_at=started,
            fault_start=started + (drill.fault_start or 0),
            pid=proc.pid,
        )
    )
    say(f"Blind drill started (run {run_id}, {drill.load.duration:.0f}s of load).")
    say("Briefing:\n  " + drill.briefing.strip().replace("\n", "\n  "))
    say(
        "Investigate with the dashboards, traces and logs. Then:\n"
        "  make answer SERVICE=<service|none> KIND=<fault kind|none>\n"
        "  make hint      (costs points)"
    )
    return 0


def _open_state() -> tuple[BlindState, Drill]:
    state = read_current()
    if not state:
        raise LabError(f"no blind drill: start one with `{command('blind')}`")
    if state.closed:
        raise LabError(
            f"the blind drill {state.run_id} is over; start another with `{command('blind')}`"
        )
    return state, unseal(state, load_drills())


def cmd_hint(args: argparse.Namespace) -> int:
    state, drill = _open_state()
    used = len(state.hints)
    if used >= len(drill.hints):
        say("No more hints.")
        return 0
    hint = drill.hints[used]
    state.hints.append(HintUsed(at=time.time(), cost=hint.cost))
    write_current(state)
    say(f"Hint {used + 1}/{len(drill.hints)} (-{hint.cost} points): {hint.text}")
    return 0


def sealed_dir(run_id: str) -> Path:
    """Where a blind run's journal and report wait until the drill is answered: they name the
    faults, the expected alerts and the debrief, so they stay out of the run's folder (a
    hidden folder beside it, as the fault audit sits beside the lab's runtime folder)."""
    return DRILLS_VAR / ".sealed" / run_id


def journal_dir(run_id: str) -> Path:
    """The folder that holds the run's journal: sealed while the drill is unanswered."""
    sealed = sealed_dir(run_id)
    return sealed if (sealed / "journal.json").exists() else DRILLS_VAR / run_id


def unseal_run(run_id: str) -> None:
    """The drill is answered: its journal and report move into the run's folder."""
    sealed, run_dir = sealed_dir(run_id), DRILLS_VAR / run_id
    if not sealed.is_dir():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in sealed.iterdir():
        path.replace(run_dir / path.name)
    sealed.rmdir()


def clock_start(state: BlindState, drill: Drill) -> float:
    """The trainee's clock: from the first page, else the fault, else the drill's start."""
    if state.first_page_at:
        return state.first_page_at
    journal = Journal.read(journal_dir(state.run_id))
    if journal and (page := journal.first_page()):
        return page
    live = DRILLS_VAR / state.run_id / "first_page"
    if live.exists():
        return float(live.read_text())
    return state.fault_start if drill.timeline else state.started_at


def attach_answer(journal: Journal, state: BlindState, drill: Drill) -> None:
    """The answers given so far, and their score, into the run's journal."""
    journal.drill = drill.id
    if not state.guesses:
        return
    journal.answer = Answer(
        guesses=[g.model_dump() for g in state.guesses], hints=[h.model_dump() for h in state.hints]
    )
    journal.score = state.scored(drill, journal.time_to_detect)


def guess_problem(service: str, kind: str) -> str | None:
    """Why a guess is not an answer at all (a typo must not cost a guess), or None."""
    if normalise(service) not in {*SERVICES, NO_INCIDENT}:
        return f"unknown service {service!r}; one of: {', '.join(SERVICES)}, or none"
    if normalise(kind) not in {*FAULT_KINDS, CAPACITY, NO_INCIDENT}:
        kinds = ", ".join((*FAULT_KINDS, CAPACITY))
        return f"unknown fault kind {kind!r}; one of: {kinds}, or none"
    return None


def cmd_answer(args: argparse.Namespace) -> int:
    state, drill = _open_state()
    problem = guess_problem(args.service, args.kind)
    if problem:
        say(f"Not an answer: {problem}. Not counted as a guess.")
        return 2
    guess = Guess(args.service, args.kind, time.time())
    state.guesses.append(GuessMade(service=guess.service, kind=guess.kind, at=guess.at))
    service_ok, kind_ok = is_right(guess, drill.answer.service, drill.answer.kind)
    result = state.scored(drill, None)
    done = (service_ok and kind_ok) or len(state.guesses) >= MAX_GUESSES
    if not done:
        left = MAX_GUESSES - len(state.guesses)
        what = "right service, wrong fault kind" if service_ok else "wrong service"
        say(f"Not quite: {what}. {left} guess(es) left; each wrong guess costs points.")
        write_current(state)
        return 1
    state.closed = True
    write_current(state)
    say(f"{'Right' if service_ok and kind_ok else 'Out of guesses'}: the drill was {drill.id}.")
    if drill.answer.kind == CAPACITY:
        cause = "no fault: more shoppers than the lab can serve (capacity)"
    elif drill.answer.service == NO_INCIDENT:
        cause = "no incident"
    else:
        cause = f"{drill.answer.kind} on {drill.answer.service}"
    say(f"Cause: {cause}.\nScore: {result.total}/100 {result.breakdown}")
    say("Debrief: " + drill.debrief.summary.strip())
    for ev in drill.debrief.evidence:
        say(f"  - {ev.kind}: {ev.where}: {ev.what}")
    run_dir = DRILLS_VAR / state.run_id
    unseal_run(state.run_id)
    journal = Journal.read(run_dir)
    if journal is not None:  # the run is over: put the score into its journal and report
        attach_answer(journal, state, drill)
        journal.write(run_dir)
        write_report(run_dir, drill, journal, {})
        say(f"Report: {run_dir / 'report.md'}")
    else:
        say(f"The drill is still running; its report will be in {run_dir}/report.md")
    return 0 if service_ok and kind_ok else 1
