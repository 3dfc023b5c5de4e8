"""Instrumentation overhead: a bare FastAPI app vs the same endpoint with the kit's full
instrumentation, side by side in one run.

Each app is a real uvicorn process (same flags: --no-access-log, uvloop/httptools from
uvicorn[standard]) pinned to core 0; wrk drives it from core 1. After a warm-up, the apps are
measured in alternating rounds so that machine noise (this box is shared) hits all of them
alike; the report gives per-app medians over rounds, the spread, and the ratio to bare.

    uv run --frozen python -m tests.bench.overhead            # 3 rounds x 10 s per app
    uv run --frozen python -m tests.bench.overhead --quick    # 1 round x 3 s, to try it out

Prints a table and writes var/bench/overhead.json. A benchmark reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.bench.common import stop_on_sigterm

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "bench" / "overhead.json"

APPS = {
    "bare": ("tests.bench.apps:bare_app", "plain FastAPI, no instrumentation"),
    "kit": (
        "tests.bench.apps:kit_app",
        "kit: 100% traces (BatchSpanProcessor -> span file), RED + exemplars, JSON log/request",
    ),
    "kit-notrace": (
        "tests.bench.apps:kit_notrace_app",
        "kit without the FastAPI instrumentation (attribution only)",
    ),
    "otel-defaults": (
        "tests.bench.apps:otel_defaults_app",
        "FastAPIInstrumentor defaults only: 100% traces (BatchSpanProcessor -> span file)",
    ),
    "kit-native": (
        "tests.bench.apps:kit_native_app",
        "kit with FastAPI's native OTel spans instead of the instrumentation (experiment)",
    ),
}
SERVER_CORE = "0"
LOAD_CORE = "1"
PATH = "/ping"


@dataclass
class Server:
    name: str
    factory: str
    workdir: Path
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def span_file(self) -> Path:
        return self.workdir / f"{self.name}.spans.jsonl"

    def start(self) -> None:
        # Bind here and hand the socket over (uvicorn --fd): no port can be stolen meanwhile.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            {
                "SPAN_FILE": str(self.span_file),
                "TRACE_SAMPLE_RATIO": "1.0",
                "LOG_LEVEL": "info",
                "DATA_DIR": str(self.workdir / "data"),
            }
        )
        log = self.log_file.open("ab")
        try:
            self.proc = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    SERVER_CORE,
                    sys.executable,
                    "-m",
                    "tests.bench.serve",  # uvicorn, with TCP_NODELAY (see serve.py)
                    str(sock.fileno()),
                    self.factory,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
            )
        finally:
            log.close()
            sock.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise SystemExit(f"{self.name}: uvicorn exited ({self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(self.url + PATH, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: not answering {PATH} after 60 s")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, below: float = 0.05, deadline_s: float = 10.0) -> None:
        """Until the server uses under `below` of a core over 200 ms (bounded): no batch export
        or GC from the previous run is still being paid for in the next one's CPU figure."""
        end = time.monotonic() + deadline_s
        before = self.cpu_seconds()
        while time.monotonic() < end:
            time.sleep(0.2)  # the sampling window, not a wait for an event
            now = self.cpu_seconds()
            if now - before < below * 0.2:
                return
            before = now
        print(f"  warning: {self.name} still busy after {deadline_s:.0f} s; measuring anyway")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # lifespan shutdown flushes the span processor
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Result:
    app: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    server_cpu: float  # share of one core used by the server during the run
    cpu_us_per_req: float  # server CPU time per request: robust to other load on core 0
    loadavg: float


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict:
    def grab(pattern: str) -> re.Match:
        m = re.search(pattern, output, re.M)
        if not m:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
        return m

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(grab(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "p50_ms": _ms(grab(r"^\s+50%\s+(\S+)").group(1)),
        "p99_ms": _ms(grab(r"^\s+99%\s+(\S+)").group(1)),
        "requests": int(grab(r"^\s+(\d+) requests in").group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
    }


def run_wrk(server: Server, seconds: float, connections: int) -> tuple[dict, float, float]:
    """wrk's figures, plus the server's CPU seconds and the wall seconds of the run."""
    cmd = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        server.url + PATH,
    ]
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk(out.stdout), cpu, wall


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": (wrk_version.stdout + wrk_version.stderr).strip().splitlines()[0],
    }


@dataclass
class Summary:
    app: str
    rounds: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)

    def spread(self, attr: str) -> float:
        """(max - min) / median over rounds: how noisy this app's figure was."""
        values = [getattr(r, attr) for r in self.rounds]
        med = statistics.median(values)
        return (max(values) - min(values)) / med if med else 0.0


def count_lines(path: Path, needle: bytes) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if needle in line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round x 3 s per app (a smoke run)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per app")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument(
        "--apps",
        default="bare,kit,kit-notrace,otel-defaults",
        help=f"comma-separated, first is the baseline; known: {', '.join(APPS)}",
    )
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, span files)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        p.error("rounds must be 1..20 and duration 1..120 s")
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = [a for a in apps if a not in APPS]
    if unknown:
        p.error(f"unknown app(s) {unknown}; known: {list(APPS)}")

    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            print(
                f"error: `{tool}` is not installed; this benchmark needs it "
                f"(Debian: `sudo apt-get install {package}`).",
                file=sys.stderr,
            )
            return 2
    if (os.cpu_count() or 1) < 2:
        print("error: needs 2 cores (server on core 0, wrk on core 1)", file=sys.stderr)
        return 2

    info = machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}, "
        f"{info['wrk']}"
    )
    print(
        f"plan: {len(apps)} apps x {args.rounds} rounds x {args.duration:g} s, "
        f"wrk -t1 -c{args.connections} on core {LOAD_CORE}, server on core {SERVER_CORE}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    stop_on_sigterm()
    servers = {a: Server(a, APPS[a][0], workdir) for a in apps}
    summaries = {a: Summary(a) for a in apps}
    sent = dict.fromkeys(apps, 0)
    try:
        for s in servers.values():
            s.start()
        for a in apps:  # warm-up: imports, caches, JIT-free Python's dict/route caches
            data, _, _ = run_wrk(servers[a], args.warmup, args.connections)
            sent[a] += data["requests"]
        for rnd in range(args.rounds):
            # Alternate, and rotate the order each round so no app always goes first.
            order = apps[rnd % len(apps) :] + apps[: rnd % len(apps)]
            for a in order:
                for s in servers.values():  # all on core 0: the previous run's exports drained
                    s.wait_idle()
                data, cpu_s, wall = run_wrk(servers[a], args.duration, args.connections)
                cpu = cpu_s / wall
                sent[a] += data["requests"]
                r = Result(
                    app=a,
                    round=rnd + 1,
                    server_cpu=round(cpu, 3),
                    cpu_us_per_req=round(cpu_s / max(data["requests"], 1) * 1e6, 1),
                    loadavg=os.getloadavg()[0],
                    **data,
                )
                summaries[a].rounds.append(r)
                print(
                    f"  round {rnd + 1} {a:12s} {r.rps:9.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                    f"p99 {r.p99_ms:6.2f} ms  cpu {cpu:4.0%} {r.cpu_us_per_req:5.0f} us/req  "
                    f"load {r.loadavg:.2f}"
                    + (f"  non-2xx {r.non_2xx}" if r.non_2xx else "")
                    + (f"  socket errors {r.socket_errors}" if r.socket_errors else "")
                )
    finally:
        for s in servers.values():
            s.stop()

    # Was the instrumentation really on? Count what the kit apps wrote.
    checks = {}
    for a in apps:
        if a != "bare":
            checks[a] = {
                "requests_sent": sent[a],
                "spans_written": count_lines(servers[a].span_file, b'"GET /ping"'),
                "access_log_lines": count_lines(servers[a].log_file, b'"event":"request"'),
            }

    base = summaries[apps[0]]
    rows = []
    for a in apps:
        s = summaries[a]
        rows.append(
            {
                "app": a,
                "description": APPS[a][1],
                "rps": round(s.median("rps"), 1),
                "p50_ms": round(s.median("p50_ms"), 3),
                "p99_ms": round(s.median("p99_ms"), 3),
                "ratio": round(s.median("rps") / base.median("rps"), 3),
                "rps_spread": round(s.spread("rps"), 3),
                "server_cpu": round(s.median("server_cpu"), 3),
                "cpu_us_per_req": round(s.median("cpu_us_per_req"), 1),
                # CPU cost per request relative to the baseline, inverted: the throughput
                # ratio one would get if the server had core 0 to itself.
                "cpu_ratio": round(base.median("cpu_us_per_req") / s.median("cpu_us_per_req"), 3),
            }
        )
    print()
    print(f"median over {args.rounds} round(s) of {args.duration:g} s; ratio = req/s vs {apps[0]}")
    print(
        f"{'app':12s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'ratio':>6s} "
        f"{'spread':>7s} {'cpu':>5s} {'us/req':>7s} {'cpu ratio':>9s}"
    )
    for row in rows:
        print(
            f"{row['app']:12s} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['ratio']:6.2f} {row['rps_spread']:7.1%} {row['server_cpu']:5.0%} "
            f"{row['cpu_us_per_req']:7.0f} {row['cpu_ratio']:9.2f}"
        )
    for a, c in checks.items():
        print(
            f"{a}: {c['requests_sent']} requests sent, {c['spans_written']} spans exported, "
            f"{c['access_log_lines']} access-log lines"
        )
    print(
        "spread = (max - min) / median of req/s over rounds; cpu = server's share of core 0;\n"
        "us/req = server CPU time per request; cpu ratio = bare us/req / app us/req (the\n"
        "throughput ratio without other load on core 0; trust it when cpu < ~95%)"
    )

    report = {
        "benchmark": "instrumentation overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "server_core": SERVER_CORE,
            "load_core": LOAD_CORE,
            "endpoint": "GET " + PATH,
            "uvicorn": "factory, no access log, uvloop, httptools, TCP socket inherited",
        },
        "summary": rows,
        "instrumentation_check": checks,
        "rounds": [r.__dict__ for s in summaries.values() for r in s.rounds],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
