"""Lab footprint: time from `make up` to all healthy, and the resident memory and CPU of every
lab process, idle and at the default load (what a laptop user feels).

Each run starts the native lab through the runner's API (``NativeLab.up``), exactly as ``make
up`` does, on OS-chosen ports in a fresh runtime folder (the venv is already synced): first the
services, receiver, Alertmanager and Prometheus without load, then the runner's steady Locust
(the default 10 users) beside them; the two ``up`` calls together are the time to all healthy.
Memory is the sum of RSS over every component's process tree: at idle (the lab up, no Locust,
after a few seconds of quiet) and under the default load (after ``--load-seconds``). RSS
counts shared pages once per process, so the sum is an upper bound of what the lab holds. CPU
is the cores each component's process tree used: idle over ``--idle-seconds`` after the
settle, loaded over the last two thirds of ``--load-seconds`` (the first third ramps up).

    uv run --frozen python -m tests.bench.footprint            # 3 runs, 60 s of load in run 1
    uv run --frozen python -m tests.bench.footprint --quick    # 1 run, 15 s of load

Prints a table and writes var/bench/footprint.json. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tests.bench.common import (
    BENCH_DIR,
    ROOT,
    Lab,
    add_load,
    loadavg,
    machine,
    start_lab,
    stop_lab,
)

OUT = BENCH_DIR / "footprint.json"
GOAL_HEALTHY_S = 20.0
GOAL_MEMORY_MB = 800.0
GOAL_LOADED_CORES = 0.15  # the whole lab at the default 10 users, Locust included


def cores(lab: Lab, seconds: float) -> dict[str, float]:
    """CPU cores each component used over the next `seconds` (all threads, child processes)."""
    before, t0 = lab.cpu(), time.monotonic()
    time.sleep(seconds)  # the measuring window itself, not a wait for something
    after, wall = lab.cpu(), time.monotonic() - t0
    return {k: round((v - before.get(k, v)) / wall, 4) for k, v in after.items()}


def total_cores(by: dict[str, float], without: tuple[str, ...] = ()) -> float:
    return round(sum(v for k, v in by.items() if k not in without), 3)


def one_run(index: int, measure_memory: bool, idle_seconds: float, load_seconds: float) -> dict:
    lab = start_lab(load=False)
    try:
        services_s = lab.up_seconds
        idle_mb = None
        idle_by = {}
        idle_cpu: dict[str, float] = {}
        if measure_memory:
            time.sleep(idle_seconds)  # let imports, first scrapes and DB setup settle
            idle_cpu = cores(lab, idle_seconds)
            idle_by = lab.rss()
            idle_mb = sum(idle_by.values()) / 2**20
        locust_s = add_load(lab)
        row = {
            "run": index,
            "services_healthy_s": round(services_s, 2),
            "locust_healthy_s": round(locust_s, 2),
            "all_healthy_s": round(services_s + locust_s, 2),
            "loadavg": loadavg(),
        }
        if measure_memory:
            time.sleep(load_seconds / 3)  # Locust's users ramp up and log in
            loaded_cpu = cores(lab, load_seconds * 2 / 3)
            loaded_by = lab.rss()
            row.update(
                idle_cores=total_cores(idle_cpu),
                idle_cores_by_component=idle_cpu,
                loaded_cores=total_cores(loaded_cpu),
                loaded_cores_without_locust=total_cores(loaded_cpu, ("locust",)),
                loaded_cores_by_component=loaded_cpu,
                idle_rss_mb=round(idle_mb, 1),
                idle_rss_mb_by_component={k: round(v / 2**20, 1) for k, v in idle_by.items()},
                loaded_rss_mb=round(sum(loaded_by.values()) / 2**20, 1),
                loaded_rss_mb_by_component={k: round(v / 2**20, 1) for k, v in loaded_by.items()},
                load_seconds=load_seconds,
            )
        return row
    finally:
        stop_lab(lab)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--load-seconds", type=float, default=60.0)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="1 run, 15 s of load (a smoke run)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.load_seconds, args.idle_seconds = 1, 15.0, 5.0
    if not 1 <= args.runs <= 10 or not 0 <= args.load_seconds <= 600:
        p.error("runs 1..10, load-seconds 0..600")

    info = machine()
    print(
        f"footprint: {args.runs} run(s); memory in run 1 (idle after {args.idle_seconds:g} s, "
        f"loaded after {args.load_seconds:g} s); load average {info['loadavg_at_start']}"
    )
    runs = []
    for i in range(args.runs):
        row = one_run(i + 1, i == 0, args.idle_seconds, args.load_seconds)
        runs.append(row)
        extra = ""
        if "idle_rss_mb" in row:
            extra = f"  idle {row['idle_rss_mb']:.0f} MB  loaded {row['loaded_rss_mb']:.0f} MB"
        print(
            f"  run {row['run']}: healthy in {row['all_healthy_s']:.1f} s "
            f"(services+monitoring {row['services_healthy_s']:.1f} s, "
            f"Locust {row['locust_healthy_s']:.1f} s){extra}  load {row['loadavg']:.2f}"
        )
    first = runs[0]
    summary = {
        "healthy_s_median": round(statistics.median(r["all_healthy_s"] for r in runs), 2),
        "healthy_s_all": [r["all_healthy_s"] for r in runs],
        "idle_rss_mb": first.get("idle_rss_mb"),
        "loaded_rss_mb": first.get("loaded_rss_mb"),
        "idle_cores": first.get("idle_cores"),
        "loaded_cores": first.get("loaded_cores"),
        "loaded_cores_without_locust": first.get("loaded_cores_without_locust"),
        "goal_loaded_cores": GOAL_LOADED_CORES,
        "goal_healthy_s": GOAL_HEALTHY_S,
        "goal_memory_mb": GOAL_MEMORY_MB,
    }
    summary["healthy_goal_met"] = summary["healthy_s_median"] <= GOAL_HEALTHY_S
    summary["memory_goal_met"] = max(summary["idle_rss_mb"], summary["loaded_rss_mb"]) <= (
        GOAL_MEMORY_MB
    )
    summary["cpu_goal_met"] = summary["loaded_cores"] <= GOAL_LOADED_CORES
    print()
    print(
        f"{'component':13s} {'idle MB':>8s} {'loaded MB':>9s} "
        f"{'idle cores':>10s} {'loaded cores':>12s}"
    )
    for name, mb in first["loaded_rss_mb_by_component"].items():
        idle = first["idle_rss_mb_by_component"].get(name)
        idle_c = first["idle_cores_by_component"].get(name)
        print(
            f"{name:13s} {'—' if idle is None else f'{idle:.0f}':>8s} {mb:9.0f} "
            f"{'—' if idle_c is None else f'{idle_c:.3f}':>10s} "
            f"{first['loaded_cores_by_component'].get(name, 0):12.3f}"
        )
    print(
        f"{'total':13s} {first['idle_rss_mb']:8.0f} {first['loaded_rss_mb']:9.0f} "
        f"{first['idle_cores']:10.3f} {first['loaded_cores']:12.3f}"
    )
    print(
        f"CPU: {first['idle_cores']:.3f} cores idle, {first['loaded_cores']:.3f} at the default "
        f"load ({first['loaded_cores_without_locust']:.3f} without Locust; goal <= "
        f"{GOAL_LOADED_CORES} core)"
    )
    print(
        f"time to healthy: median {summary['healthy_s_median']:.1f} s over {len(runs)} run(s) "
        f"(goal <= {GOAL_HEALTHY_S:.0f} s); memory {first['idle_rss_mb']:.0f} MB idle, "
        f"{first['loaded_rss_mb']:.0f} MB loaded (goal <= {GOAL_MEMORY_MB:.0f} MB)"
    )
    report = {
        "benchmark": "lab footprint",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "config": {
            "runs": args.runs,
            "idle_seconds": args.idle_seconds,
            "load_seconds": args.load_seconds,
            "load": "the runner's steady Locust, default users",
        },
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
