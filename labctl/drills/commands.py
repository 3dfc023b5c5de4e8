"""``labctl drill ...``: chaos drills against the native lab (docs/drills.md).

Commands: ``list``, ``run <id>`` (progress, journal, report), ``blind [--seed N]`` (a random
drill in the background, its name hidden), ``hint``, ``answer --service X --kind Y`` (scored),
``verify [--only a,b]`` (every drill's expected alerts fire within bound, nothing else fires,
no data lost, every native debrief step finds what it says; a table and exit 1 on any
failure), ``steps [run]`` (a finished run's native debrief steps, run again).

``run``/``blind``/``rollback`` use the lab in ``LAB_DIR`` (default var/lab, what ``make up``
started), or with ``--lab FILE`` any lab given by its URLs (labctl.drills.target); ``verify``
starts its own lab on free ports in var/drills/lab unless ``--use-running`` or ``--lab``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labctl.config import SERVICES, LabError, lab_dir
from labctl.drills.blind import cmd_answer, cmd_blind, cmd_hint
from labctl.drills.common import DRILLS_VAR, command, find_drill, new_run_id, say
from labctl.drills.execute import execute
from labctl.drills.faults import FaultClient
from labctl.drills.journal import Journal
from labctl.drills.model import load_drills
from labctl.drills.native_steps import check_steps, command_line, window_of
from labctl.drills.prometheus import Prometheus
from labctl.drills.target import open_lab, started_at
from labctl.drills.verify import cmd_verify
from labctl.native.lab import NativeLab


def cmd_list(args: argparse.Namespace) -> int:
    drills = load_drills()
    width = max(len(d) for d in drills)
    for drill in drills.values():
        say(f"  {drill.id:<{width}}  {drill.difficulty:<6}  {drill.title}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # A blind run is told its drill on standard input (labctl.drills.blind: not in `ps`).
    drill_id = args.drill or (sys.stdin.readline().strip() if args.blind else "")
    if not drill_id:
        raise LabError(f"which drill? `{command('list')}` shows them")
    drill = find_drill(load_drills(), drill_id)
    lab = open_lab(args.lab, lambda: NativeLab(lab_dir(), out=say))
    out = say
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


def cmd_rollback(args: argparse.Namespace) -> int:
    """Clear every fault and restart crashed services, e.g. after a killed drill runner."""
    lab = open_lab(args.lab, lambda: NativeLab(lab_dir(), out=say))
    try:
        urls = lab.urls
        services = {s: u for s, u in urls.items() if s in SERVICES}
        faults = FaultClient(services, lab.admin_token())
        releases = {  # a bad release's end is a rollback: the service restarts
            s: started_at(u) for s, u in services.items() if "bad_release" in faults.kinds_active(s)
        }
        say(f"cleared: {faults.clear_all()}")
        faults.close()
        for service, before in releases.items():
            lab.redeployed(service, before, say)
        restarted = lab.restart(say)
        say(f"restarted: {', '.join(restarted) or 'nothing'}")
    finally:
        lab.close()
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    """The debrief's native steps of a finished run, each run again against the lab now."""
    runs = sorted(
        (p for p in DRILLS_VAR.glob("*") if (p / "journal.json").exists()),
        key=lambda p: (p / "journal.json").stat().st_mtime,
    )
    if args.run:
        runs = [DRILLS_VAR / args.run]
    journal = Journal.read(runs[-1]) if runs else None
    if journal is None:
        raise LabError(f"no finished run {args.run or ''} in {DRILLS_VAR}".replace("  ", " "))
    if journal.drill is None:
        raise LabError(f"{journal.run_id} is a blind drill not answered yet: {command('answer')}")
    drill = find_drill(load_drills(), journal.drill)
    urls = journal.lab.get("urls", {})
    prom = Prometheus(urls.get("prometheus", ""))
    try:
        window = window_of(drill, journal.started_at, journal.load_ended_at)
        runtime_dir = journal.lab.get("runtime_dir")  # absent for a lab given by URLs
        results = check_steps(drill, runtime_dir and Path(runtime_dir), prom, window)
    finally:
        prom.close()
    say(f"{journal.run_id} ({drill.id}): the debrief's native steps, run now")
    steps = {command_line(step, window): step for step in drill.debrief.native}
    for result in results:
        step = steps[result.command]
        say(f"\n[{step.pillar}] {result.command}\n  shows: {step.finds}")
        say(f"  found: {result.found} -> {'ok' if result.ok else 'NOT FOUND'}")
    return 0 if all(r.ok for r in results) else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``labctl drill <command>`` in the one command line (labctl.cli)."""
    parser = sub.add_parser("drill", help="chaos drills: list, run, blind, hint, answer, verify")
    sub = parser.add_subparsers(dest="drill_command", required=True)
    sub.add_parser("list", help="the drills").set_defaults(func=cmd_list)
    lab_help = "a lab given by its URLs: a lab file (TOML, docs/drills.md); default: LAB_DIR"
    run = sub.add_parser("run", help="run one drill against the running lab")
    run.add_argument("drill", nargs="?")
    run.add_argument("--lab", metavar="FILE", help=lab_help)
    run.add_argument("--run-id")
    run.add_argument("--blind", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--log", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    blind = sub.add_parser("blind", help="start a random drill without revealing it")
    blind.add_argument("--seed", type=int)
    blind.add_argument("--force", action="store_true", help="abandon an open blind drill")
    blind.add_argument("--lab", metavar="FILE", help=lab_help)
    blind.set_defaults(func=cmd_blind)
    hint = sub.add_parser("hint", help="next hint of the blind drill (costs points)")
    hint.set_defaults(func=cmd_hint)
    answer = sub.add_parser("answer", help="answer the blind drill: service and fault kind")
    answer.add_argument("--service", required=True, help="a service, or none")
    answer.add_argument("--kind", required=True, help="fault kind (latency, error, ...) or none")
    answer.set_defaults(func=cmd_answer)
    ver = sub.add_parser("verify", help="run drills and check alerts, bounds and data")
    ver.add_argument("--only", help="comma-separated drill ids")
    ver.add_argument("--use-running", action="store_true", help="use the lab in LAB_DIR")
    ver.add_argument("--lab", metavar="FILE", help=lab_help)
    ver.add_argument("--keep-lab", action="store_true", help="leave verify's own lab running")
    ver.set_defaults(func=cmd_verify)
    steps = sub.add_parser("steps", help="a finished run's native debrief steps, run again")
    steps.add_argument("run", nargs="?", help="run id (a folder in var/drills; default: latest)")
    steps.set_defaults(func=cmd_steps)
    rollback = sub.add_parser("rollback", help="clear all faults, restart crashed services")
    rollback.add_argument("--lab", metavar="FILE", help=lab_help)
    rollback.set_defaults(func=cmd_rollback)
