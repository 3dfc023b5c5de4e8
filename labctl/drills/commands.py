"""``python -m labctl.drill``: chaos drills against the native lab (docs/drills.md).

Commands: ``list``, ``run <id>`` (progress, journal, report), ``blind [--seed N]`` (a random
drill in the background, its name hidden), ``hint``, ``answer --service X --kind Y`` (scored),
``verify [--only a,b]`` (every drill's expected alerts fire within bound, nothing else fires,
no data lost; a table and exit 1 on any failure).

``run``/``blind`` use the lab in ``LAB_DIR`` (default var/lab, what ``make up`` started);
``verify`` starts its own lab on free ports in var/drills/lab unless ``--use-running``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from labctl.config import REPO_ROOT, SERVICES, LabError, Ports
from labctl.drill_model import NO_INCIDENT, Drill, load_drills
from labctl.drill_report import write_journal, write_report
from labctl.drill_runner import DrillRunner, RunResult, restart_services
from labctl.native import NativeLab
from labctl.scoring import MAX_GUESSES, Guess, is_right, normalise, score
from services.fault_spec import FAULT_KINDS

DRILLS_VAR = REPO_ROOT / "var" / "drills"
CURRENT = DRILLS_VAR / "current.json"
VERIFY_FIRST = "no-incident"  # first, while no earlier drill can leave a slow-burn window behind


def _say(text: str) -> None:
    print(text, flush=True)


def _lab_dir() -> Path:
    raw = os.environ.get("LAB_DIR", "").strip()
    return Path(raw).resolve() if raw else REPO_ROOT / "var" / "lab"


def new_run_id(blind: bool = False) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.urandom(3).hex()}" if blind else stamp


def _drill(drills: dict[str, Drill], drill_id: str) -> Drill:
    if drill_id not in drills:
        raise LabError(f"no drill {drill_id!r}; `list` shows them: {', '.join(drills)}")
    return drills[drill_id]


def finish(result: RunResult, runner: DrillRunner) -> None:
    """Journal and report; a blind run also takes the answers given so far."""
    journal = result.journal
    state = _read_current()
    if state and state.get("run_id") == result.run_dir.name:
        journal["drill"] = result.drill.id
        _attach_answer(journal, state, result.drill)
        state["finished"] = True
        state["first_page_at"] = _first_page(journal)
        _write_current(state)
    write_journal(result.run_dir, journal)
    write_report(result.run_dir, result.drill, journal, getattr(runner, "prom_series", {}))


def execute(
    lab: NativeLab,
    drill: Drill,
    run_id: str,
    *,
    blind: bool = False,
    wait_quiet: bool = False,
    out: Any = _say,
) -> RunResult:
    run_dir = DRILLS_VAR / run_id
    runner = DrillRunner(lab, drill, run_dir, out=out, blind=blind, wait_quiet=wait_quiet)
    try:
        if not blind:
            out(f"Drill {drill.id}: {drill.title} ({drill.difficulty}); run {run_id}")
            out(f"  load: {drill.load.shape}, {drill.load.users} users, {drill.load.duration:.0f}s")
        result = runner.run()
        finish(result, runner)
    finally:
        runner.close()
    if not blind:
        reasons = ": " + "; ".join(result.failures) if result.failures else ""
        out(f"  verdict {result.verdict}{reasons}")
        out(f"  journal: {run_dir / 'journal.json'}\n  report:  {run_dir / 'report.md'}")
    return result


# ------------------------------------------------------------------------ commands


def cmd_list(args: argparse.Namespace) -> int:
    drills = load_drills()
    width = max(len(d) for d in drills)
    for drill in drills.values():
        _say(f"  {drill.id:<{width}}  {drill.difficulty:<6}  {drill.title}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    drill = _drill(load_drills(), args.drill)
    lab = NativeLab(_lab_dir(), out=_say)
    out = _say
    if args.log:
        log = Path(args.log).open("a", encoding="utf-8")  # lives as long as the run

        def out(text: str) -> None:
            log.write(text + "\n")
            log.flush()

    try:
        result = execute(lab, drill, args.run_id or new_run_id(), blind=args.blind, out=out)
    finally:
        lab.close()
    return 0 if result.verdict == "PASS" else 1


def _read_current() -> dict[str, Any] | None:
    try:
        return json.loads(CURRENT.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_current(state: dict[str, Any]) -> None:
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    tmp = CURRENT.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(CURRENT)


def _first_page(journal: dict[str, Any]) -> float | None:
    pages = [
        a["fired_at"]
        for a in journal.get("alerts", [])
        if not a["carried"] and a["labels"].get("severity") == "page" and a["fired_at"]
    ]
    return min(pages) if pages else None


def pick(drills: dict[str, Drill], seed: int | None) -> Drill:
    """A seedable random choice: the same seed gives the same drill (game days, tests)."""
    return drills[random.Random(seed).choice(sorted(drills))]


def cmd_blind(args: argparse.Namespace) -> int:
    state = _read_current()
    if state and not state.get("closed") and not args.force:
        raise LabError("a blind drill is still open: `answer` it first (or `blind --force`)")
    drills = load_drills()
    drill = pick(drills, args.seed)
    lab = NativeLab(_lab_dir(), out=_say)
    try:
        if not all(s in lab.urls for s in ("gateway", "prometheus")):
            raise LabError("the lab is not running: start it with `make up`")
    finally:
        lab.close()
    run_id = new_run_id(blind=True)
    run_dir = DRILLS_VAR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "runner.log"
    argv = [sys.executable, "-m", "labctl.drill", "run", drill.id, "--blind"]
    argv += ["--run-id", run_id, "--log", str(log)]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    started = time.time()
    _write_current(
        {
            "run_id": run_id,
            "drill_id": drill.id,
            "seed": args.seed,
            "started_at": started,
            "fault_start": started + (drill.fault_start or 0),
            "pid": proc.pid,
            "hints": [],
            "guesses": [],
            "closed": False,
            "finished": False,
        }
    )
    _say(f"Blind drill started (run {run_id}, {drill.load.duration:.0f}s of load).")
    _say("Briefing:\n  " + drill.briefing.strip().replace("\n", "\n  "))
    _say(
        "Investigate with the dashboards, traces and logs. Then:\n"
        "  uv run python -m labctl.drill answer --service <service|none> --kind <fault kind|none>\n"
        "  uv run python -m labctl.drill hint      (costs points)"
    )
    return 0


def _open_state() -> tuple[dict[str, Any], Drill]:
    state = _read_current()
    if not state:
        raise LabError("no blind drill: start one with `blind`")
    if state.get("closed"):
        raise LabError(f"the blind drill {state['run_id']} is over; start another with `blind`")
    return state, _drill(load_drills(), state["drill_id"])


def cmd_hint(args: argparse.Namespace) -> int:
    state, drill = _open_state()
    used = len(state["hints"])
    if used >= len(drill.hints):
        _say("No more hints.")
        return 0
    hint = drill.hints[used]
    state["hints"].append({"at": time.time(), "cost": hint.cost})
    _write_current(state)
    _say(f"Hint {used + 1}/{len(drill.hints)} (-{hint.cost} points): {hint.text}")
    return 0


def clock_start(state: dict[str, Any], drill: Drill) -> float:
    """The trainee's clock: from the first page, else the fault, else the drill's start."""
    if state.get("first_page_at"):
        return state["first_page_at"]
    journal = DRILLS_VAR / state["run_id"] / "journal.json"
    if journal.exists():
        page = _first_page(json.loads(journal.read_text(encoding="utf-8")))
        if page:
            return page
    live = DRILLS_VAR / state["run_id"] / "first_page"
    if live.exists():
        return float(live.read_text())
    return state["fault_start"] if drill.timeline else state["started_at"]


def _attach_answer(journal: dict[str, Any], state: dict[str, Any], drill: Drill) -> None:
    if not state.get("guesses"):
        return
    guesses = [Guess(g["service"], g["kind"], g["at"]) for g in state["guesses"]]
    result = score(
        guesses,
        drill.answer.service,
        drill.answer.kind,
        clock_start(state, drill),
        journal.get("time_to_detect"),
        [h["cost"] for h in state["hints"]],
    )
    journal["answer"] = {"guesses": state["guesses"], "hints": state["hints"]}
    journal["score"] = result.as_dict()


def guess_problem(service: str, kind: str) -> str | None:
    """Why a guess is not an answer at all (a typo must not cost a guess), or None."""
    if normalise(service) not in {*SERVICES, NO_INCIDENT}:
        return f"unknown service {service!r}; one of: {', '.join(SERVICES)}, or none"
    if normalise(kind) not in {*FAULT_KINDS, NO_INCIDENT}:
        return f"unknown fault kind {kind!r}; one of: {', '.join(FAULT_KINDS)}, or none"
    return None


def cmd_answer(args: argparse.Namespace) -> int:
    state, drill = _open_state()
    problem = guess_problem(args.service, args.kind)
    if problem:
        _say(f"Not an answer: {problem}. Not counted as a guess.")
        return 2
    guess = Guess(args.service, args.kind, time.time())
    state["guesses"].append({"service": guess.service, "kind": guess.kind, "at": guess.at})
    service_ok, kind_ok = is_right(guess, drill.answer.service, drill.answer.kind)
    guesses = [Guess(g["service"], g["kind"], g["at"]) for g in state["guesses"]]
    result = score(
        guesses,
        drill.answer.service,
        drill.answer.kind,
        clock_start(state, drill),
        None,
        [h["cost"] for h in state["hints"]],
    )
    done = (service_ok and kind_ok) or len(guesses) >= MAX_GUESSES
    if not done:
        left = MAX_GUESSES - len(guesses)
        what = "right service, wrong fault kind" if service_ok else "wrong service"
        _say(f"Not quite: {what}. {left} guess(es) left; each wrong guess costs points.")
        _write_current(state)
        return 1
    state["closed"] = True
    _write_current(state)
    _say(f"{'Right' if service_ok and kind_ok else 'Out of guesses'}: the drill was {drill.id}.")
    cause = (
        "no incident"
        if drill.answer.service == NO_INCIDENT
        else (f"{drill.answer.kind} on {drill.answer.service}")
    )
    _say(f"Cause: {cause}.\nScore: {result.total}/100 {result.breakdown}")
    _say("Debrief: " + drill.debrief.summary.strip())
    for ev in drill.debrief.evidence:
        _say(f"  - {ev.kind}: {ev.where}: {ev.what}")
    run_dir = DRILLS_VAR / state["run_id"]
    journal_path = run_dir / "journal.json"
    if journal_path.exists():  # the run is over: put the score into its journal and report
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
        journal["drill"] = drill.id
        _attach_answer(journal, state, drill)
        write_journal(run_dir, journal)
        write_report(run_dir, drill, journal, {})
        _say(f"Report: {run_dir / 'report.md'}")
    else:
        _say(f"The drill is still running; its report will be in {run_dir}/report.md")
    return 0 if service_ok and kind_ok else 1


# -------------------------------------------------------------------------- verify


def verify(
    lab: NativeLab, drills: list[Drill], out: Any = _say, *, rebuild: bool = True
) -> tuple[bool, list[dict[str, Any]]]:
    """Run each drill in turn, waiting for quiet between them; the table rows and overall ok.

    A drill that leaves the lab broken (a component gone that should run) is reported as an
    ERROR, and the lab is rebuilt before the next drill (when `rebuild`: a lab verify started
    itself), so one broken drill does not fail every drill after it."""
    rows = []
    ok = True
    for drill in drills:
        out(f"== {drill.id}")
        try:
            result = execute(
                lab, drill, f"verify-{new_run_id()}-{drill.id}", wait_quiet=True, out=out
            )
        except LabError as exc:
            rows.append(_error_row(drill, f"the lab is not usable: {exc}"))
        else:
            rows.append(_row(drill, result))
        if missing := lab.missing():
            message = f"the lab broke during this drill ({', '.join(missing)} not running)"
            out(f"  {message}")
            rows[-1] = {
                **rows[-1],
                "verdict": "ERROR",
                "failures": [*rows[-1]["failures"], message],
            }
            if not rebuild:
                break
            out("  rebuilding the lab before the next drill")
            lab.down()
            lab.up()
        ok = ok and rows[-1]["verdict"] == "PASS"
    return ok, rows


def _row(drill: Drill, result: RunResult) -> dict[str, Any]:
    fired = sorted({r.name for r in result.tracker.fired()})
    expected = result.journal["expected"]
    return {
        "drill": drill.id,
        "expected": ", ".join(e["alert"] for e in expected) or "(none)",
        "fired": ", ".join(fired) or "(none)",
        "detect": ", ".join(
            "—" if e["detected_after"] is None else f"{e['detected_after']:.0f}s" for e in expected
        )
        or "—",
        "bounds": ", ".join(f"{e['within']:.0f}s" for e in expected) or "—",
        "data": "ok" if result.journal["data_check"].get("ok") else "FAIL",
        "verdict": result.verdict,
        "failures": result.failures,
        "run_dir": str(result.run_dir),
    }


def _error_row(drill: Drill, message: str) -> dict[str, Any]:
    return {
        "drill": drill.id, "expected": "—", "fired": "—", "detect": "—", "bounds": "—",
        "data": "—", "verdict": "ERROR", "failures": [message], "run_dir": "",
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    header = ("drill", "expected", "fired", "time to detect", "bound", "data", "verdict")
    keys = ("drill", "expected", "fired", "detect", "bounds", "data", "verdict")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + " |")
    for row in rows:
        for failure in row["failures"]:
            lines.append(f"- {row['drill']}: {failure}")
    return "\n".join(lines)


def verify_order(drills: dict[str, Drill], only: list[str] | None) -> list[Drill]:
    ids = only or list(drills)
    for drill_id in ids:
        _drill(drills, drill_id)
    ids = sorted(ids, key=lambda i: (i != VERIFY_FIRST, list(drills).index(i)))
    return [drills[i] for i in ids]


def cmd_verify(args: argparse.Namespace) -> int:
    drills = load_drills()
    chosen = verify_order(drills, [i for i in (args.only or "").split(",") if i] or None)
    started = time.monotonic()
    if args.use_running:
        lab = NativeLab(_lab_dir(), out=_say)
        stop_after = False
    else:
        # Drills drive their own load, so the lab's background Locust stays off: the load of a
        # verify run is exactly the drill's. Free ports: a `make up` lab may run beside it.
        lab = NativeLab(DRILLS_VAR / "lab", Ports.any_free(), load=False, out=_say)
        _say(f"Starting a native lab for verify in {lab.runtime_dir}")
        lab.up()
        stop_after = not args.keep_lab
    try:
        ok, rows = verify(lab, chosen, rebuild=not args.use_running)
    finally:
        if stop_after:
            lab.down()
        lab.close()
    text = table(rows)
    _say("\n" + text)
    summary = DRILLS_VAR / "verify-summary.md"
    summary.write_text(text + "\n", encoding="utf-8")
    minutes = (time.monotonic() - started) / 60
    _say(f"\n{sum(r['verdict'] == 'PASS' for r in rows)}/{len(rows)} drills passed "
         f"in {minutes:.1f} min; table in {summary}")  # fmt: skip
    return 0 if ok else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    """Clear every fault and restart crashed services, e.g. after a killed drill runner."""
    from labctl.drill_runner import FaultClient

    lab = NativeLab(_lab_dir(), out=_say)
    try:
        urls = lab.urls
        services = {s: u for s, u in urls.items() if s in SERVICES}
        faults = FaultClient(services, lab.admin_token())
        _say(f"cleared: {faults.clear_all()}")
        faults.close()
        state = json.loads(lab.state_file.read_text(encoding="utf-8"))
        ports = {n: e["port"] for n, e in state["components"].items() if e.get("port")}
        restarted = restart_services(lab, ports, _say)
        _say(f"restarted: {', '.join(restarted) or 'nothing'}")
    finally:
        lab.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labctl.drill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the drills").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="run one drill against the running lab")
    run.add_argument("drill")
    run.add_argument("--run-id")
    run.add_argument("--blind", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--log", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    blind = sub.add_parser("blind", help="start a random drill without revealing it")
    blind.add_argument("--seed", type=int)
    blind.add_argument("--force", action="store_true", help="abandon an open blind drill")
    blind.set_defaults(func=cmd_blind)
    sub.add_parser("hint", help="next hint of the blind drill (costs points)").set_defaults(
        func=cmd_hint
    )
    answer = sub.add_parser("answer", help="answer the blind drill: service and fault kind")
    answer.add_argument("--service", required=True, help="a service, or none")
    answer.add_argument("--kind", required=True, help="fault kind (latency, error, ...) or none")
    answer.set_defaults(func=cmd_answer)
    ver = sub.add_parser("verify", help="run drills and check alerts, bounds and data")
    ver.add_argument("--only", help="comma-separated drill ids")
    ver.add_argument("--use-running", action="store_true", help="use the lab in LAB_DIR")
    ver.add_argument("--keep-lab", action="store_true", help="leave verify's own lab running")
    ver.set_defaults(func=cmd_verify)
    sub.add_parser("rollback", help="clear all faults, restart crashed services").set_defaults(
        func=cmd_rollback
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
