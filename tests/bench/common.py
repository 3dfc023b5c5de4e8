"""Helpers the lab benchmarks share: the machine, the native lab on free ports, process trees,
CPU and memory sampling, and Prometheus queries. Nothing here asserts a number."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "var" / "bench"


def machine() -> dict:
    """What the figures were measured on (no external tool needed)."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    # Not `import locust`: that monkey-patches the whole process (gevent).
    with contextlib.suppress(Exception):
        info["locust"] = importlib.metadata.version("locust")
    for tool, args in (("prometheus", ["--version"]),):
        path = shutil.which(tool)
        if path:
            out = subprocess.run([path, *args], capture_output=True, text=True, check=False)
            text = out.stdout or out.stderr
            version = re.search(r"version (\S+)", text)
            info[tool] = version.group(1) if version else text.strip()[:40]
    return info


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


# ----------------------------------------------------------------------- processes


def tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process and every live descendant, plus children it reaped."""
    total = 0.0
    for member in tree(proc):
        with contextlib.suppress(psutil.Error):
            t = member.cpu_times()
            total += t.user + t.system
            if member.pid == proc.pid:
                total += t.children_user + t.children_system
    return total


def rss_bytes(proc: psutil.Process) -> int:
    total = 0
    for member in tree(proc):
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


# -------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    """A native lab of our own on OS-chosen ports in a fresh runtime folder."""

    lab: object  # labctl.native.NativeLab
    runtime_dir: Path
    up_seconds: float

    @property
    def urls(self) -> dict[str, str]:
        return self.lab.urls  # type: ignore[attr-defined]

    def components(self) -> dict[str, psutil.Process]:
        """Component name -> its main process (from the runner's state file)."""
        running = self.lab._running()  # type: ignore[attr-defined]
        return {name: proc for name, (_, proc) in running.items()}

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(p) for name, p in self.components().items()}

    def rss(self) -> dict[str, int]:
        return {name: rss_bytes(p) for name, p in self.components().items()}


def start_lab(
    *,
    load: bool = False,
    users: int = 10,
    runtime_dir: Path | None = None,
    quiet: bool = True,
    root: Path | None = None,
) -> Lab:
    """``make up`` on free ports in a fresh folder; ``up_seconds`` is the time to all healthy.

    ``root``: serve the services (and Prometheus config) from another checkout, e.g. a patched
    copy for a before/after comparison; the benchmark itself runs from this one.
    """
    from labctl.config import Ports
    from labctl.native.lab import NativeLab

    stop_on_sigterm()
    rt = runtime_dir or Path(tempfile.mkdtemp(prefix="lab-", dir=_bench_tmp()))
    lines: list[str] = []
    out = lines.append if quiet else print
    extra = {"root": Path(root)} if root else {}
    # The capacity steps log hundreds of users in within a minute, all from 127.0.0.1: the
    # per-client login limit (docs/security.md) is lifted here, the benchmark measures the shop.
    env = {
        **os.environ,
        "LOGIN_CLIENT_ATTEMPTS": os.environ.get("LOGIN_CLIENT_ATTEMPTS", "1000000"),
    }
    lab = NativeLab(rt, Ports.any_free(), env=env, load=load, users=users, out=out, **extra)
    t0 = time.monotonic()
    try:
        lab.up()
    except BaseException:
        with contextlib.suppress(Exception):
            lab.down()
        print("\n".join(lines))
        raise
    return Lab(lab, rt, time.monotonic() - t0)


def stop_on_sigterm() -> None:
    """SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so `finally` stops what the benchmark
    started instead of leaving its lab's processes behind."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        with contextlib.suppress(ValueError):  # not the main thread: leave it to the caller
            signal.signal(signal.SIGTERM, interrupt)


def add_load(lab: Lab, users: int = 10) -> float:
    """Start the runner's own steady Locust beside a running lab; seconds until it answers."""
    from labctl.config import Ports
    from labctl.native.lab import NativeLab

    quiet = lambda _: None  # noqa: E731
    loaded = NativeLab(lab.runtime_dir, Ports.any_free(), load=True, users=users, out=quiet)
    t0 = time.monotonic()
    loaded.up()
    loaded.close()
    return time.monotonic() - t0


def stop_lab(lab: Lab, *, remove: bool = True) -> None:
    with contextlib.suppress(Exception):
        lab.lab.down()  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        lab.lab.close()  # type: ignore[attr-defined]
    if remove:
        shutil.rmtree(lab.runtime_dir, ignore_errors=True)


@contextlib.contextmanager
def running_lab(**kwargs) -> Iterator[Lab]:
    lab = start_lab(**kwargs)
    try:
        yield lab
    finally:
        stop_lab(lab)


def _bench_tmp() -> Path:
    path = BENCH_DIR / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------ Prometheus


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=10.0, trust_env=False)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        resp = self.http.get(f"{self.url}/api/v1/query", params=params)
        resp.raise_for_status()
        body = resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus: {body}")
        return body["data"]["result"]

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The single value of an expression (None when empty or NaN)."""
        result = self.query(expr, at)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if value != value else value  # NaN

    def by(self, label: str, expr: str, at: float | None = None) -> dict[str, float]:
        out = {}
        for row in self.query(expr, at):
            value = float(row["value"][1])
            if value == value:
                out[row["metric"].get(label, "")] = value
        return out

    def wait_scraped(self, job: str, deadline_s: float = 30.0) -> bool:
        """Until Prometheus has scraped ``job`` at least once (bounded)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                if self.scalar(f'max(up{{job="{job}"}})') == 1.0:
                    return True
            time.sleep(0.5)
        return False

    def wait_scraped_after(self, job: str, after: float, deadline_s: float = 30.0) -> bool:
        """Until Prometheus holds a sample of ``job`` scraped after unix time ``after`` (bounded):
        then rates evaluated at ``after`` cover everything up to it."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                last = self.scalar(f'max(timestamp(up{{job="{job}"}}))')
                if last is not None and last > after:
                    return True
            time.sleep(0.5)
        return False

    def close(self) -> None:
        self.http.close()


def fmt_mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"
