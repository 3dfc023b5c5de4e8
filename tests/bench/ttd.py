"""Time to detect: from the drills' verify runs, fault start to first page, next to each bound.

Reads the journals `make verify` leaves (``var/drills/verify-<time>-<drill>/journal.json``; the
drill runner records, per expected alert, ``detected_after`` = seconds from the fault's start to
the alert firing, and ``within`` = the drill's bound) and keeps the latest run of each drill.
It runs no drill itself: a verify run takes ~4 minutes per drill.

    uv run --frozen python -m tests.bench.ttd

Prints a table and writes var/bench/ttd.json. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tests.bench.common import BENCH_DIR, ROOT

OUT = BENCH_DIR / "ttd.json"
DRILLS_VAR = ROOT / "var" / "drills"
NONE_FOUND = "no verify run found: run make verify"


def latest_journals(drills_var: Path = DRILLS_VAR) -> dict[str, tuple[Path, dict]]:
    """Drill id -> (run dir, journal) of its latest verify run that finished."""
    found: dict[str, tuple[Path, dict]] = {}
    for run_dir in sorted(drills_var.glob("verify-*")):  # run ids sort by start time
        journal_path = run_dir / "journal.json"
        if not run_dir.is_dir() or not journal_path.exists():
            continue
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        drill = journal.get("drill") or run_dir.name.split("-", 3)[-1]
        found[drill] = (run_dir, journal)
    return found


def collect(drills_var: Path = DRILLS_VAR) -> dict:
    rows = []
    for drill, (run_dir, journal) in sorted(latest_journals(drills_var).items()):
        base = {
            "drill": drill,
            "run_id": journal.get("run_id", run_dir.name),
            "verdict": journal.get("verdict"),
            "started_at": journal.get("started_at"),
        }
        expected = journal.get("expected") or []
        if not expected:
            rows.append({**base, "alert": None, "detected_after_s": None, "bound_s": None})
        for e in expected:
            labels = ",".join(f"{k}={v}" for k, v in sorted((e.get("labels") or {}).items()))
            rows.append(
                {
                    **base,
                    "alert": e.get("alert") + (f"{{{labels}}}" if labels else ""),
                    "detected_after_s": e.get("detected_after"),
                    "bound_s": e.get("within"),
                    "within_bound": e.get("ok"),
                }
            )
    return {
        "benchmark": "time to detect",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(
            drills_var.relative_to(ROOT) if drills_var.is_relative_to(ROOT) else drills_var
        ),
        "found": bool(rows),
        "message": "" if rows else NONE_FOUND,
        "rows": rows,
    }


def print_table(report: dict) -> None:
    if not report["found"]:
        print(NONE_FOUND)
        return
    print(f"{'drill':24s} {'alert':52s} {'detect s':>8s} {'bound s':>7s}  verdict")
    for r in report["rows"]:
        det = "—" if r["detected_after_s"] is None else f"{r['detected_after_s']:.1f}"
        bound = "—" if r["bound_s"] is None else f"{r['bound_s']:.0f}"
        alert = r["alert"] or "(no alert expected)"
        print(f"{r['drill']:24s} {alert[:52]:52s} {det:>8s} {bound:>7s}  {r['verdict']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drills-var", type=Path, default=DRILLS_VAR)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    report = collect(args.drills_var.resolve())
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
