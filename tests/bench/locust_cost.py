"""Load generator cost: Locust's CPU seconds per 1,000 requests (FastHttpUser), item 3.

The capacity benchmark also reports this figure, but there the lab caps the rate at a few dozen
requests per second, where Locust's fixed cost (stats, greenlet scheduling) dominates. Here a
plain FastAPI app (tests/bench/apps.py:bare_app, the overhead benchmark's baseline) is pinned
to core 0 and one Locust process to core 1, closed loop (no wait) with ``--users`` users, so
Locust runs as fast as it can: CPU seconds of the Locust process tree (psutil, user + system)
over the measured window divided by the requests it completed in that window.

    uv run --frozen python -m tests.bench.locust_cost             # 20 s, 3 user counts
    uv run --frozen python -m tests.bench.locust_cost --quick     # 8 s, 1 user count

Prints a table and writes var/bench/locust_cost.json. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.bench.common import BENCH_DIR, ROOT, cpu_seconds, loadavg, machine
from tests.bench.overhead import APPS, Server

OUT = BENCH_DIR / "locust_cost.json"
LOCUSTFILE = Path(__file__).with_name("locust_cost_locust.py")
GOAL = 0.25


def total_requests(prefix: Path) -> int:
    path = Path(f"{prefix}_stats.csv")
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "Aggregated":
                return int(row["Request Count"])
    return 0


def one(server: Server, users: int, seconds: float, warmup: float, work: Path) -> dict:
    prefix = work / f"u{users}"
    env = {**os.environ, "LOCUST_METRICS_PORT": "off", "NO_PROXY": "127.0.0.1"}
    cmd = [
        "taskset", "-c", "1", sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
        "--headless", "--host", server.url, "-u", str(users), "-r", str(max(users, 1)),
        "-t", f"{int(warmup + seconds + 2)}s", "--csv", str(prefix), "--csv-full-history",
        "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    log = (work / f"locust-u{users}.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    time.sleep(warmup)  # imports, spawning
    history_path = Path(f"{prefix}_stats_history.csv")
    c0, t0, n0 = cpu_seconds(ps), time.time(), _count_at(history_path)
    time.sleep(seconds)
    c1, t1, n1 = cpu_seconds(ps), time.time(), _count_at(history_path)
    proc.wait(timeout=warmup + seconds + 60)
    log.close()
    requests = n1 - n0
    cpu = c1 - c0
    return {
        "users": users,
        "seconds": round(t1 - t0, 1),
        "requests": requests,
        "req_per_s": round(requests / (t1 - t0), 1),
        "locust_cpu_cores": round(cpu / (t1 - t0), 3),
        "cpu_s_per_1000_req": round(cpu / requests * 1000, 3) if requests else None,
        "total_requests": total_requests(prefix),
        "loadavg": loadavg(),
    }


def _count_at(history: Path) -> int:
    """Aggregated request count in Locust's latest history row (written every second)."""
    if not history.exists():
        return 0
    last = 0
    with history.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "Aggregated":
                last = int(row["Total Request Count"])
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="1,10,50", help="user counts, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.seconds, args.warmup = "10", 8.0, 4.0
    users = [int(u) for u in args.users.split(",") if u.strip()]
    if not users or any(not 1 <= u <= 500 for u in users) or not 2 <= args.seconds <= 300:
        p.error("users 1..500, seconds 2..300")
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("error: needs taskset and 2 cores (app on core 0, Locust on core 1)")
        return 2
    info = machine()
    print(
        f"locust cost: FastHttpUser, no wait, users {users}, {args.seconds:g} s each; bare app on "
        f"core 0, Locust on core 1; load average {info['loadavg_at_start']}"
    )
    (BENCH_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="locust-cost-", dir=BENCH_DIR / "tmp"))
    server = Server("bare", APPS["bare"][0], work)
    rows = []
    try:
        server.start()
        for u in users:
            row = one(server, u, args.seconds, args.warmup, work)
            rows.append(row)
            print(
                f"  {u:4d} users: {row['req_per_s']:7.0f} req/s, "
                f"Locust {row['locust_cpu_cores']:.2f} cores, "
                f"{row['cpu_s_per_1000_req']} CPU s per 1,000 req  load {row['loadavg']}"
            )
    finally:
        server.stop()
    best = min((r for r in rows if r["cpu_s_per_1000_req"]), key=lambda r: r["cpu_s_per_1000_req"],
               default=None)  # fmt: skip
    if best:
        print(
            f"Locust: {best['cpu_s_per_1000_req']:.3f} CPU s per 1,000 requests at "
            f"{best['req_per_s']:.0f} req/s (goal <= {GOAL})"
        )
    report = {
        "benchmark": "load generator cost",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "config": {"users": users, "seconds": args.seconds, "target": "bare FastAPI GET /ping"},
        "rows": rows,
        "result": {
            "cpu_s_per_1000_req": best["cpu_s_per_1000_req"] if best else None,
            "req_per_s": best["req_per_s"] if best else None,
            "users": best["users"] if best else None,
            "goal": GOAL,
            "goal_met": bool(best and best["cpu_s_per_1000_req"] <= GOAL),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
