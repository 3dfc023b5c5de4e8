"""``labctl``: the one command line of the lab (``make up`` and friends call it).

    labctl up|down|status|clean|logs      the lab (native processes, or compose where Docker runs)
    labctl drill list|run|blind|hint|answer|verify|rollback   chaos drills (docs/drills.md)
    labctl slo render|check|write-tests   SLO rules from deploy/prometheus/slos.yaml (docs/slo.md)
    labctl traces|trace|exemplars|logs    triage the native lab's telemetry (docs/triage.md)

Argument parsing and output only: the work is in ``native``, ``compose``, ``drills`` and ``slo``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labctl import compose, tables
from labctl.config import REPO_ROOT, SERVICES, LabError, PortInUseError, Ports, lab_dir
from labctl.drills import commands as drill_commands
from labctl.native.binaries import ensure_binaries
from labctl.native.components import ComponentStatus, total_rss
from labctl.native.lab import NativeLab
from labctl.slo import commands as slo_commands
from labctl.triage import commands as triage_commands

MODES = ("auto", "native", "compose")


def _say(text: str) -> None:
    print(text, flush=True)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _pick_mode(requested: str, lab: NativeLab | None = None) -> str:
    if requested != "auto":
        return requested
    if lab is not None and lab.state_file.exists() and lab._running():
        return "native"  # a native lab is running: down/status must find it, Docker or not
    if compose.docker_answers(REPO_ROOT):
        _say("A Docker engine answers: compose mode (MODE=native forces the native lab).")
        return "compose"
    return "native"


def _lab(args: argparse.Namespace, ports: Ports | None = None, **kw: object) -> NativeLab:
    return NativeLab(lab_dir(), ports, out=_say, **kw)  # type: ignore[arg-type]


def format_table(rows: list[ComponentStatus]) -> str:
    """The URL table ``up`` and ``status`` print."""

    def cells(row: ComponentStatus) -> tuple[str, ...]:
        rss = f"{row.rss_bytes / 2**20:.0f} MB" if row.rss_bytes else ""
        state = row.state + (f" ({row.note})" if row.note else "")
        return (row.name, state, str(row.pid or ""), row.url or "", rss, row.what)

    return tables.aligned(("component", "state", "pid", "url", "rss", "what"), map(cells, rows))


def cmd_up(args: argparse.Namespace) -> int:
    ports = Ports.from_env()  # a bad port is reported before anything starts
    probe = _lab(args, ports)
    mode = _pick_mode(args.mode, probe)
    if mode == "compose":
        return compose.run(REPO_ROOT, "up")
    for name in SERVICES:
        if not (REPO_ROOT / "services" / name / "main.py").exists():
            raise LabError(f"services/{name}/main.py is missing: the services are not built yet")
    _say(f"TriageLab, native mode: runtime folder {_display(probe.runtime_dir)}")
    binaries = ensure_binaries(out=_say)
    lab = _lab(
        args, ports, binaries=binaries, users=args.users, spawn_rate=args.spawn_rate,
        load=not args.no_load, timeout=args.timeout,
    )  # fmt: skip
    t0 = time.monotonic()
    rows = lab.up()
    elapsed = time.monotonic() - t0
    _say("")
    _say(format_table(rows))
    _say("")
    ready = [r for r in rows if r.state == "ready"]
    _say(f"{len(ready)} components ready in {elapsed:.1f}s, {total_rss(rows) / 2**20:.0f} MB RSS.")
    if lab.env.get("ADMIN_TOKEN"):
        _say("Admin token for fault injection: ADMIN_TOKEN from your environment")
    elif "ADMIN_TOKEN" in lab.generated_secrets:  # printed once, when made (docs/security.md)
        _say(f"Admin token for fault injection (ADMIN_TOKEN): {lab.admin_token()}")
        _say(f"  (new for this lab; kept with its other secrets in {_display(lab.secrets_file)})")
    else:
        _say(f"Admin token for fault injection: ADMIN_TOKEN in {_display(lab.secrets_file)}")
    _say(f"Alerts received: {_display(lab.alerts_file)}; logs: {_display(lab.runtime_dir)}/logs/")
    _say("Next: `make status`, `make logs`, `make down` (keeps data), `make clean` (deletes it).")
    return 0 if all(r.state in ("ready", "off") for r in rows) else 1


def cmd_down(args: argparse.Namespace) -> int:
    lab = _lab(args, Ports.from_env())
    mode = _pick_mode(args.mode, lab)
    if mode == "compose":
        return compose.run(REPO_ROOT, "down")
    stopped = lab.down()
    if stopped:
        _say(f"Stopped {', '.join(stopped)}. Data kept in {_display(lab.runtime_dir)}.")
    else:
        _say("Nothing of the native lab was running.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lab = _lab(args, Ports.from_env())
    mode = _pick_mode(args.mode, lab)
    if mode == "compose":
        return compose.run(REPO_ROOT, "status")
    rows = lab.status()
    _say(format_table(rows))
    live = [r for r in rows if r.pid]
    if not live:
        _say("The native lab is not running (`make up` starts it).")
        return 3
    _say(f"Total RSS: {total_rss(rows) / 2**20:.0f} MB across {len(lab.processes())} processes.")
    return 0 if all(r.state in ("ready", "off") for r in rows) else 1


def cmd_clean(args: argparse.Namespace) -> int:
    lab = _lab(args, Ports.from_env())
    mode = _pick_mode(args.mode, lab)
    if mode == "compose":
        return compose.run(REPO_ROOT, "clean")
    lab.clean()
    _say(f"Stopped the lab and deleted {_display(lab.runtime_dir)}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labctl",
        description="Run the TriageLab lab: native processes, or Docker Compose where Docker runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab and print its URLs")
    up.add_argument("--mode", choices=MODES, default="auto")
    up.add_argument("--users", type=int, default=10, help="Locust users (default 10)")
    up.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second")
    up.add_argument("--no-load", action="store_true", help="do not start Locust")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for health")
    up.set_defaults(func=cmd_up)
    for name, func, text in (
        ("down", cmd_down, "stop what `up` started; data stays"),
        ("status", cmd_status, "show each component, pid, URL, health"),
        ("clean", cmd_clean, "stop and delete the runtime folder (data, logs, alerts)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--mode", choices=MODES, default="auto")
        p.set_defaults(func=func)
    triage_commands.add_commands(sub)
    drill_commands.add_commands(sub)
    slo_commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
