"""``labctl slo render|check|write-tests``: the SLO rule files and their promtool tests."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from labctl.config import REPO_ROOT
from labctl.slo.promtool import Measured, generate_tests, ttp_table
from labctl.slo.rules import drifted, loading_problems, render_all
from labctl.slo.spec import SPEC_PATH, TESTS_DIR, SpecError, load_spec


def _spec(args: argparse.Namespace):
    try:
        return load_spec(args.spec)
    except (SpecError, OSError, KeyError, TypeError) as exc:
        raise SystemExit(f"slo spec error: {exc}") from None


def _relative(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def cmd_check(args: argparse.Namespace) -> int:
    spec = _spec(args)
    stale = drifted(spec)
    for path in stale:
        print(f"out of date: {_relative(path)}", file=sys.stderr)
    if stale:
        print("run: labctl slo render  (make rules)", file=sys.stderr)
    problems = loading_problems(spec, args.prometheus_config)
    for problem in problems:
        print(f"deploy/prometheus/prometheus.yml: {problem}", file=sys.stderr)
    if stale or problems:
        return 1
    print("SLO rule files match the spec; Prometheus loads one profile")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    for path, text in render_all(_spec(args)).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {_relative(path)}")
    return 0


def cmd_write_tests(args: argparse.Namespace) -> int:
    """Render, then measure time-to-alert with promtool and rewrite the burn-rate tests."""
    cmd_render(args)
    spec = _spec(args)
    rows: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        for profile in spec.profiles.values():
            for name, text, measured in generate_tests(spec, profile, Path(tmp)):
                out = TESTS_DIR / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text)
                rows.extend(measured)
                print(f"wrote {_relative(out)}", flush=True)
    print(ttp_table(rows))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    slo = sub.add_parser("slo", help="SLO rules: render, check, write-tests (docs/slo.md)")
    slo_sub = slo.add_subparsers(dest="slo_command", required=True)
    for name, func, text in (
        ("render", cmd_render, "regenerate the rule files from deploy/prometheus/slos.yaml"),
        ("check", cmd_check, "exit 1 if the committed rule files differ from the spec"),
        ("write-tests", cmd_write_tests, "re-measure time-to-page with promtool (~7 min)"),
    ):
        p = slo_sub.add_parser(name, help=text)
        p.add_argument("--spec", type=Path, default=SPEC_PATH, help="SLO spec (slos.yaml)")
        p.set_defaults(func=func, prometheus_config=None)
        if name == "check":
            p.add_argument("--prometheus-config", type=Path, help="default: the project's")
