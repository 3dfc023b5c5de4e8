"""CPU cost per request of each benchmark app, driven in process (no sockets, no server).

A companion to `overhead.py` for working on the instrumentation: it calls the ASGI app
directly in a loop and reports process CPU microseconds per request (the span exporter's
thread included), which is far steadier on a shared machine than req/s through wrk. It leaves
out uvicorn's own per-request work (HTTP parsing, transport), so its ratios are lower than the
end-to-end ones.

    uv run --frozen python -m tests.bench.asgi_cost [--requests 20000] [--profile kit]

Logs go to a temp file, spans to a temp span file. `--profile APP` runs that app under
pyinstrument and writes var/bench/profile-APP.html (and prints the text tree to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCOPE_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"wrk"),
    (b"accept", b"*/*"),
]


def _scope() -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/ping",
        "raw_path": b"/ping",
        "query_string": b"",
        "headers": list(SCOPE_HEADERS),
        "state": {},
    }


async def _receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drive(app, n: int, rounds: int) -> list[float]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            sent.append(message)

    # Lifespan startup, as uvicorn does it.
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def lreceive():
        return await queue.get()

    async def lsend(message):
        if message["type"].startswith("lifespan.startup"):
            started.set()
        if message["type"].startswith("lifespan.shutdown"):
            stopped.set()

    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, lreceive, lsend)
    )
    await started.wait()
    for _ in range(500):  # warm-up
        await app(_scope(), _receive, send)
    costs = []
    for _ in range(rounds):
        sent.clear()
        c0 = time.process_time()
        for _ in range(n):
            await app(_scope(), _receive, send)
        costs.append((time.process_time() - c0) / n * 1e6)
        assert len(sent) == n and sent[0]["status"] == 200, sent[:1]
        await asyncio.sleep(0.2)
    await queue.put({"type": "lifespan.shutdown"})
    await stopped.wait()
    await task
    return costs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--apps", default="bare,kit,kit-notrace")
    p.add_argument("--profile", default="", help="an app to run under pyinstrument")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-asgi-"))
    os.environ["SPAN_FILE"] = str(tmp / "spans.jsonl")
    os.environ["DATA_DIR"] = str(tmp / "data")
    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[k]
    # The kit logs to stdout: send our stdout to a file, report on stderr.
    real_out = os.dup(1)
    log = open(tmp / "stdout.log", "wb")
    os.dup2(log.fileno(), 1)
    report = os.fdopen(real_out, "w", buffering=1)

    import uvloop

    from tests.bench import apps as bench_apps

    factories = {
        "bare": bench_apps.bare_app,
        "kit": bench_apps.kit_app,
        "kit-notrace": bench_apps.kit_notrace_app,
        "kit-native": bench_apps.kit_native_app,
    }
    results = {}
    for name in [a.strip() for a in args.apps.split(",")]:
        app = factories[name]()
        if name == args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002, async_mode="disabled")
            profiler.start()
            costs = uvloop.run(_drive(app, args.requests, args.rounds))
            profiler.stop()
            out = ROOT / "var" / "bench" / f"profile-{name}.html"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(profiler.output_html())
            print(
                profiler.output_text(unicode=False, show_all=os.environ.get("PROFILE_ALL") == "1"),
                file=sys.stderr,
            )
            print(f"wrote {out}", file=report)
        else:
            costs = uvloop.run(_drive(app, args.requests, args.rounds))
        results[name] = statistics.median(costs)
        print(
            f"{name:12s} {results[name]:7.1f} us/request (rounds: "
            + ", ".join(f"{c:.1f}" for c in costs)
            + ")",
            file=report,
        )
    if "bare" in results:
        for name, cost in results.items():
            print(f"{name:12s} cpu ratio vs bare {results['bare'] / cost:.2f}", file=report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
