"""Process and port helpers: only ever touch processes the lab started.

A pid alone is not an identity (pids are reused), so every recorded pid carries when its
process started, and every child gets a marker variable (``TRIAGELAB_LAB_DIR``) naming the
runtime folder it belongs to.

"When it started" must not move when the wall clock does: psutil's ``create_time()`` is the boot
time (read from /proc/stat, whole seconds, on every call) plus the start ticks, so an NTP step,
a VM clock sync or a laptop resuming shifts every process's create time at once, and a lab that
compared create times judged all its running services dead. On Linux the identity is the
kernel's start ticks since boot (/proc/<pid>/stat, field 22), which no clock update touches;
elsewhere the create time, compared with a tolerance of CREATE_TIME_TOLERANCE.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from collections.abc import Iterable

import psutil

MARKER_ENV = "TRIAGELAB_LAB_DIR"
# Without start ticks (not Linux): a pid reused within this many seconds is not told apart; a
# clock step larger than this makes the lab lose track of its processes.
CREATE_TIME_TOLERANCE = 2.0


def start_ticks(pid: int) -> int | None:
    """Clock ticks from boot to the process's start (Linux), or None where there is no procfs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last
    # ")"; starttime is field 22, the 20th after the command.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def identity(pid: int) -> dict[str, float | int | None]:
    """What to record beside a pid so that `own_process` can tell it is still ours."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0
    return {"create_time": create_time, "start_ticks": start_ticks(pid)}


def own_process(pid: int, create_time: float, ticks: int | None = None) -> psutil.Process | None:
    """The process if it is still the one we started (same pid *and* start)."""
    try:
        proc = psutil.Process(pid)
        if ticks is not None:
            return proc if start_ticks(pid) == ticks else None
        if abs(proc.create_time() - create_time) > CREATE_TIME_TOLERANCE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree(proc: psutil.Process) -> list[psutil.Process]:
    """The process and all its descendants (uvicorn or Locust may fork helpers)."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listening_ports(proc: psutil.Process) -> set[int]:
    """TCP ports the process tree listens on: how the runner reads back a port the OS chose."""
    ports: set[int] = set()
    for member in tree(proc):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for conn in member.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    ports.add(conn.laddr.port)
    return ports


def rss_bytes(proc: psutil.Process) -> int:
    total = 0
    for member in tree(proc):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += member.memory_info().rss
    return total


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether we could bind the port now (with SO_REUSEADDR, as servers do: TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_holder(port: int) -> str:
    """' by pid N (name)' when we may see who listens on the port, else ''."""
    with contextlib.suppress(psutil.AccessDenied, PermissionError, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return ""
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f" by pid {conn.pid} ({name})"
    return ""


def signal_group(proc: psutil.Process, sig: signal.Signals) -> None:
    """Signal the process group we created (start_new_session), and any stray descendant."""
    members = tree(proc)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            member.send_signal(sig)


def stop(procs: Iterable[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns what had to be killed."""
    everything: dict[int, psutil.Process] = {}
    for proc in procs:
        for member in tree(proc):
            everything[member.pid] = member
        signal_group(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(list(everything.values()), timeout=grace)
    for proc in alive:
        signal_group(proc, signal.SIGKILL)
    if alive:
        _, still = psutil.wait_procs(alive, timeout=5)
        # A zombie is dead: only its parent can reap it (a service a drill runner restarted is
        # the runner's child), so it is not one that "survived".
        still = [p for p in still if is_running(p)]
        if still:
            pids = ", ".join(str(p.pid) for p in still)
            raise RuntimeError(f"processes {pids} survived SIGKILL")
    return alive


def marked_processes(runtime_dir: str) -> list[psutil.Process]:
    """Processes of this user whose environment names this lab's runtime folder."""
    me = os.getpid()
    ancestors = {p.pid for p in psutil.Process(me).parents()}
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["pid", "uids"]):
        if proc.pid == me or proc.pid in ancestors:
            continue
        uids = proc.info.get("uids")
        if uids is None or uids.real != uid:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER_ENV) == runtime_dir and is_running(proc):
                found.append(proc)
    return found
