"""The native lab: every component as a local process, no Docker.

One runtime folder (``var/lab`` by default) holds everything a run produces: pid files, a
state file, per-component logs, traces, the services' databases, Prometheus and Alertmanager
data and the alert receiver's record. ``NativeLab`` is the API; the CLI and the tests' fixture
both use it, so the tests exercise exactly what ``make up`` does.

Over 400 lines on purpose: start, stop, status and restart share one state file and one rule for
"is this process still ours" (procs.own_process), and reading them in one class is what keeps
them consistent. What differs per component (command, health path, dependencies) is data in
components.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from labctl.config import (
    COMPONENTS,
    RECEIVER_DEFAULT_PORT,
    REPO_ROOT,
    SERVICES,
    Binaries,
    LabError,
    PortInUseError,
    Ports,
)
from labctl.native import procs
from labctl.native.binaries import find_binaries
from labctl.native.components import HOST, SPECS, STOP_WAVES, ComponentStatus
from services.kit.settings import MIN_SECRET_BYTES, SECRET_SETTINGS


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


LAB_SECRETS = tuple(name.upper() for name in SECRET_SETTINGS)
"""The secrets of one lab (docs/security.md): random per lab, in its runtime folder."""


def _atomic_write(path: Path, text: str) -> None:
    """Readers (Prometheus' file_sd watcher, a concurrent status) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class NativeLab:
    """Start, inspect and stop the native lab in ``runtime_dir``.

    ``ports`` values of 0 let the OS choose; the runner reads the bound port back from the
    process (psutil), so tests never race another program for a "free" port.
    """

    def __init__(
        self,
        runtime_dir: Path | str | None = None,
        ports: Ports | None = None,
        *,
        root: Path = REPO_ROOT,
        env: Mapping[str, str] | None = None,
        binaries: Binaries | None = None,
        users: int = 10,
        spawn_rate: float = 2.0,
        load: bool = True,
        python: str = sys.executable,
        timeout: float = 90.0,
        stop_grace: float = 10.0,
        alertmanager_config: Path | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.root = Path(root).resolve()
        self.runtime_dir = Path(runtime_dir or self.root / "var" / "lab").resolve()
        self.env = dict(os.environ if env is None else env)
        self.ports = ports if ports is not None else Ports.from_env(self.env)
        self._binaries = binaries
        self.users = users
        self.spawn_rate = spawn_rate
        self.load = load
        self.python = python
        self.timeout = timeout
        self.stop_grace = stop_grace
        self.out = out
        configured = alertmanager_config or self.env.get("ALERTMANAGER_CONFIG", "").strip()
        self.alertmanager_source = Path(
            configured or self.root / "deploy" / "alertmanager" / "alertmanager.yml"
        ).resolve()
        self._http = httpx.Client(timeout=1.0, trust_env=False)
        self.generated_secrets: list[str] = []  # what the last `up` generated (printed once)

    # ----------------------------------------------------------------- layout

    @property
    def state_file(self) -> Path:
        return self.runtime_dir / "state.json"

    @property
    def alerts_file(self) -> Path:
        return self.runtime_dir / "alerts.jsonl"

    def log_file(self, name: str) -> Path:
        return self.runtime_dir / "logs" / f"{name}.log"

    @property
    def fault_audit_file(self) -> Path:
        """The admin API's audit trail (and a crash's hold, a release in progress), beside the
        runtime folder, not in it: nothing of a drill's faults where a trainee reads the lab."""
        return self.runtime_dir.parent / f".{self.runtime_dir.name}-admin" / "audit.jsonl"

    def pid_file(self, name: str) -> Path:
        return self.runtime_dir / "pids" / f"{name}.pid"

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = find_binaries(self.env)
        return self._binaries

    @property
    def secrets_file(self) -> Path:
        return self.runtime_dir / "secrets.json"

    def secrets(self, *, create: bool = False) -> dict[str, str]:
        """JWT_SECRET, ADMIN_TOKEN and INTERNAL_TOKEN of this lab.

        Each comes from the environment when set there, else from ``secrets.json`` in the
        runtime folder: random values (32 bytes, URL-safe), written with mode 0600 by the first
        ``up`` (``create``) and reused by every later one, until ``clean`` deletes the folder.
        """
        try:
            stored = json.loads(self.secrets_file.read_text(encoding="utf-8"))
            if not isinstance(stored, dict):
                stored = {}
        except FileNotFoundError:
            stored = {}
        except (OSError, json.JSONDecodeError) as exc:
            raise LabError(
                f"{self.secrets_file} is unreadable ({exc}); `make clean` resets it"
            ) from exc
        missing = [n for n in LAB_SECRETS if not isinstance(stored.get(n), str) or not stored[n]]
        if create and missing:
            for name in missing:
                stored[name] = secrets.token_urlsafe(32)
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.secrets_file.with_name(f".{self.secrets_file.name}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({n: stored[n] for n in LAB_SECRETS}, indent=2) + "\n")
            os.replace(tmp, self.secrets_file)
            self.generated_secrets = missing
        elif self.secrets_file.exists() and self.secrets_file.stat().st_mode & 0o077:
            os.chmod(self.secrets_file, 0o600)  # readable by others: not any more
        return {n: self.env.get(n) or stored.get(n, "") for n in LAB_SECRETS}

    def check_secrets(self) -> dict[str, str]:
        """This lab's secrets, made if missing; a LabError for one the services would refuse."""
        values = self.secrets(create=True)
        for name, value in values.items():
            if len(value.encode()) < MIN_SECRET_BYTES:
                raise LabError(
                    f"{name} from your environment is {len(value.encode())} bytes long; the "
                    f"services need at least {MIN_SECRET_BYTES} (unset it: `up` generates one)"
                )
        return values

    def admin_token(self) -> str:
        """The admin API's bearer token of this lab (never a constant: docs/security.md)."""
        token = self.secrets()["ADMIN_TOKEN"]
        if not token:
            raise LabError(
                f"no admin token: {self.secrets_file} does not exist (start the lab with `make up`)"
            )
        return token

    def internal_token(self) -> str:
        """The service credential of this lab (for tools that read the services' data)."""
        token = self.secrets()["INTERNAL_TOKEN"]
        if not token:
            raise LabError(
                f"no service credential: {self.secrets_file} does not exist (`make up` makes it)"
            )
        return token

    def off_reason(self, name: str) -> str:
        """Why a component will not run ('' when it will)."""
        if name == "prometheus" and not self.binaries.prometheus:
            return "not installed"
        if name == "alertmanager" and not self.binaries.alertmanager:
            return "not installed"
        if name == "locust":
            if not self.load or self.users <= 0:
                return "load off"
            if not (self.root / "loadtest" / "locustfile.py").exists():
                return "no loadtest/locustfile.py"
        return ""

    # ------------------------------------------------------------------ state

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        state.setdefault("components", {})
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.state_file, json.dumps(state, indent=2) + "\n")

    def _running(self) -> dict[str, tuple[dict[str, Any], psutil.Process]]:
        """Components recorded in the state file whose process is still ours and alive."""
        alive = {}
        for name, entry in self._load_state()["components"].items():
            proc = procs.own_process(entry["pid"], entry["create_time"], entry.get("start_ticks"))
            if proc is not None and procs.is_running(proc):
                alive[name] = (entry, proc)
        return alive

    @property
    def urls(self) -> dict[str, str]:
        """Base URL per running component (after ``up``: the ports actually bound)."""
        return {
            name: f"http://{HOST}:{entry['port']}"
            for name, (entry, _) in self._running().items()
            if entry.get("port")
        }

    def missing(self) -> list[str]:
        """Components this lab should run (installed, not switched off) that are not running."""
        running = self._running()
        return [c for c in COMPONENTS if c not in running and not self.off_reason(c)]

    def port(self, name: str) -> int:
        entry = self._load_state()["components"].get(name)
        if not entry or not entry.get("port"):
            raise LabError(f"{name} is not running")
        return int(entry["port"])

    # ---------------------------------------------------------------- prepare

    def _prepare(self) -> None:
        for sub in ("logs", "pids", "data", "traces", "prometheus/targets", "alertmanager/data"):
            (self.runtime_dir / sub).mkdir(parents=True, exist_ok=True)
        prom_dir = self.runtime_dir / "prometheus"
        # Prometheus resolves rule_files and file_sd paths against the directory of the
        # --config.file path it is given (symlinks are not followed for that), so the committed
        # config with relative paths works here and in compose alike.
        for link, target in (
            ("prometheus.yml", self.root / "deploy/prometheus/prometheus.yml"),
            ("rules", self.root / "deploy/prometheus/rules"),
            ("slo-profiles", self.root / "deploy/prometheus/slo-profiles"),
        ):
            path = prom_dir / link
            if path.is_symlink() or path.exists():
                if path.is_symlink() and Path(os.readlink(path)) == target:
                    continue
                path.unlink()
            path.symlink_to(target)

    def alertmanager_config(self, receiver_port: int) -> Path:
        """The project's config, or a copy with the receiver port substituted when it differs."""
        source = self.alertmanager_source
        if not source.exists():
            raise LabError(f"{source} is missing")
        if receiver_port == RECEIVER_DEFAULT_PORT:
            return source
        text = source.read_text(encoding="utf-8")
        pattern = rf"(//(?:127\.0\.0\.1|localhost)):{RECEIVER_DEFAULT_PORT}\b"
        rendered, count = re.subn(pattern, rf"\g<1>:{receiver_port}", text)
        if count == 0:
            self.out(
                f"  note: no 127.0.0.1:{RECEIVER_DEFAULT_PORT} webhook in {source.name}; "
                "RECEIVER_PORT has no effect on it"
            )
        header = (
            f"# Rendered by labctl from {source} with the receiver on "
            f"port {receiver_port} (RECEIVER_PORT). Edit the source, not this copy.\n"
        )
        target = self.runtime_dir / "alertmanager" / "alertmanager.yml"
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, header + rendered)
        return target

    def _write_targets(self, ports: Mapping[str, int]) -> None:
        """file_sd targets for Prometheus: one file per job, each target labelled with service."""
        target_dir = self.runtime_dir / "prometheus" / "targets"
        for name in (*SERVICES, "prometheus", "alertmanager", "locust"):
            port = ports.get(name)
            groups = []
            if port and not self.off_reason(name):
                groups = [{"targets": [f"{HOST}:{port}"], "labels": {"job": name, "service": name}}]
            _atomic_write(target_dir / f"{name}.json", json.dumps(groups, indent=2) + "\n")

    # ---------------------------------------------------------------- commands

    def _command(self, name: str, port: int, known: Mapping[str, int]) -> tuple[list[str], dict]:
        env = {
            **self.env,
            procs.MARKER_ENV: str(self.runtime_dir),
            "PYTHONUNBUFFERED": "1",
            # Lab traffic is local; a proxy from the user's shell must not capture it.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        argv, extra = SPECS[name].command(self, port, known)
        return argv, {**env, **extra}

    def _spawn(self, name: str, port: int, known: Mapping[str, int]) -> subprocess.Popen:
        argv, env = self._command(name, port, known)
        log_path = self.log_file(name)
        with log_path.open("ab") as log:
            start = {
                "timestamp": _now_iso(), "level": "info", "service": "labctl",
                "event": "starting component", "component": name, "argv": argv,
            }  # fmt: skip
            log.write((json.dumps(start) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(
                argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.pid_file(name).write_text(f"{proc.pid}\n", encoding="ascii")
        state = self._load_state()
        state["components"][name] = {
            "pid": proc.pid, **procs.identity(proc.pid), "port": port or None,
            "started_at": _now_iso(), "argv": argv,
        }  # fmt: skip
        self._save_state(state)
        return proc

    def _record_port(self, name: str, port: int) -> None:
        state = self._load_state()
        if name in state["components"]:
            state["components"][name]["port"] = port
            self._save_state(state)

    # --------------------------------------------------------------------- up

    def up(self) -> list[ComponentStatus]:
        """Start whatever is not running yet; on any failure stop what this call started."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self.check_secrets()
        running = self._running()
        known: dict[str, int] = {}
        for name, (entry, proc) in running.items():
            known[name] = entry["port"]
            asked = self.ports[name]
            if asked and asked != entry["port"]:
                self.out(f"  note: {name} already runs on port {entry['port']}, not {asked}")
            self.out(f"  {name:<13} already running (pid {proc.pid})")
        off = {c: reason for c in COMPONENTS if (reason := self.off_reason(c))}
        wanted = [c for c in COMPONENTS if c in running or c not in off]
        to_start = [c for c in wanted if c not in running]
        for name, reason in off.items():
            if name not in running:
                self.out(f"  {name:<13} skipped: {reason}")
        state = self._load_state()
        state["off"] = {c: r for c, r in off.items() if c not in running}
        self._save_state(state)
        if not to_start:
            self.out("The lab is already running.")
            return self.status()
        for name in to_start:
            port = self.ports[name]
            if port and not procs.port_free(port):
                raise PortInUseError(name, port, procs.port_holder(port))
            if port:
                known[name] = port
        started: dict[str, subprocess.Popen] = {}
        try:
            self._start(to_start, wanted, known, set(running), started)
        except BaseException:
            if started:
                self.out(f"Stopping what this run started: {', '.join(started)}")
                self._stop_names(list(started))
            raise
        return self.status()

    def _start(
        self,
        to_start: list[str],
        wanted: list[str],
        known: dict[str, int],
        ready: set[str],
        started: dict[str, subprocess.Popen],
    ) -> None:
        """Spawn each component once its dependencies allow; poll until all are healthy."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        listening: set[str] = set(ready)
        targets_written = False
        pace = threading.Event()
        max_rounds = int(self.timeout / 0.05) + 100  # a hard bound besides the deadline
        for _ in range(max_rounds):
            for name in to_start:
                if name in started:
                    continue
                spec = SPECS[name]
                deps_known = all(d in known for d in spec.port_deps if d in wanted)
                deps_ready = all(d in ready for d in spec.ready_deps if d in wanted)
                if deps_known and deps_ready:
                    started[name] = self._spawn(name, self.ports[name], known)
                    self.out(f"  {name:<13} started (pid {started[name].pid})")
            for name, popen in started.items():
                if name in ready:
                    continue
                code = popen.poll()
                if code is not None:
                    raise self._exit_error(name, code, self.ports[name] or known.get(name))
                if name not in listening:
                    port = self._bound_port(name, popen.pid)
                    if port is None:
                        continue
                    known[name] = port
                    listening.add(name)
                    self._record_port(name, port)
                if self._healthy(name, known[name]):
                    ready.add(name)
                    self.out(f"  {name:<13} ready on :{known[name]} ({time.monotonic() - t0:.1f}s)")
            if not targets_written and all(c in known for c in wanted):
                self._write_targets(known)
                targets_written = True
            if all(c in ready for c in to_start):
                return
            if time.monotonic() > deadline:
                break
            pace.wait(0.05)
        waiting = [c for c in to_start if c not in ready]
        logs = ", ".join(str(self.log_file(c)) for c in waiting)
        raise LabError(
            f"timed out after {self.timeout:.0f}s waiting for {', '.join(waiting)} "
            f"to become healthy; see {logs}"
        )

    def _bound_port(self, name: str, pid: int) -> int | None:
        """The port the process listens on; with a fixed port, only that one counts."""
        try:
            ports = procs.listening_ports(psutil.Process(pid))
        except psutil.NoSuchProcess:
            return None
        wanted = self.ports[name]
        if wanted:
            return wanted if wanted in ports else None
        # Our components listen on one port each; the lowest is the web port if one ever grows.
        return min(ports) if ports else None

    def _healthy(self, name: str, port: int) -> bool:
        try:
            resp = self._http.get(f"http://{HOST}:{port}{SPECS[name].health_path}")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def _exit_error(self, name: str, code: int, port: int | None) -> LabError:
        tail = self.log_tail(name, 15)
        if port and "address already in use" in tail.lower():
            return PortInUseError(name, port)
        return LabError(
            f"{name} exited with code {code} while starting; last lines of "
            f"{self.log_file(name)}:\n{tail}"
        )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_file(name)
        if not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])

    # ------------------------------------------------------------------- down

    def down(self) -> list[str]:
        """Stop every component this runtime folder started; data stays."""
        state = self._load_state()
        stopped = self._stop_names(list(state["components"]))
        return stopped

    def _stop_names(self, names: list[str]) -> list[str]:
        state = self._load_state()
        stopped = []
        for wave in STOP_WAVES:
            victims = []
            for name in wave:
                entry = state["components"].get(name)
                if name not in names or entry is None:
                    continue
                proc = procs.own_process(
                    entry["pid"], entry["create_time"], entry.get("start_ticks")
                )
                if proc is not None and procs.is_running(proc):
                    victims.append(proc)
                    stopped.append(name)
                elif proc is not None:
                    with contextlib.suppress(psutil.Error):
                        proc.wait(0)  # reap a zombie child of ours
            if victims:
                killed = procs.stop(victims, self.stop_grace)
                for proc in killed:
                    self.out(f"  pid {proc.pid} ignored SIGTERM for {self.stop_grace:.0f}s: killed")
        for name in names:
            state["components"].pop(name, None)
            with contextlib.suppress(FileNotFoundError):
                self.pid_file(name).unlink()
        self._save_state(state)
        if not state["components"]:
            # Anything still carrying this lab's marker (a child whose parent died) goes too.
            strays = procs.marked_processes(str(self.runtime_dir))
            if strays:
                self.out(f"  stopping {len(strays)} stray lab process(es)")
                procs.stop(strays, self.stop_grace)
        return stopped

    def fresh_monitoring(self) -> None:
        """Prometheus and Alertmanager started again on their ports with empty storage: no
        alert, burn window or notification state of an earlier run is left. The services keep
        running; their counters carry on, which rate() and increase() take in their stride."""
        names = ["prometheus", "alertmanager"]
        self._stop_names(names)
        for name in names:
            shutil.rmtree(self.runtime_dir / name / "data", ignore_errors=True)
        self.up()

    def clean(self) -> None:
        """Stop, then delete the runtime folder (databases, Prometheus data, logs, alerts).

        Only a lab's runtime folder, one that holds the state file `up` writes: LAB_DIR pointing
        at any other folder (a home directory, the repository) is refused, nothing deleted."""
        if self.runtime_dir.exists() and not self.state_file.is_file():
            raise LabError(
                f"refusing to delete {self.runtime_dir}: it holds no {self.state_file.name}, so "
                "it is not a lab's runtime folder (check LAB_DIR; delete it yourself if it is)"
            )
        self.down()
        if self.runtime_dir.exists():
            shutil.rmtree(self.runtime_dir)
        if self.fault_audit_file.parent.exists():
            shutil.rmtree(self.fault_audit_file.parent)

    # ----------------------------------------------------------------- status

    def status(self) -> list[ComponentStatus]:
        running = self._running()
        recorded_off = self._load_state().get("off")
        rows = []
        for name in COMPONENTS:
            spec = SPECS[name]
            if name not in running:
                # What the last `up` left off (e.g. --no-load) is off, not stopped.
                if recorded_off is not None:
                    reason = recorded_off.get(name, "")
                else:
                    reason = self.off_reason(name)
                state = "off" if reason else "stopped"
                rows.append(ComponentStatus(name, state, what=spec.what, note=reason))
                continue
            entry, proc = running[name]
            port = entry.get("port")
            healthy = bool(port) and self._healthy(name, port)
            url, note = self._ui(name, port) if healthy else (None, "")
            rows.append(
                ComponentStatus(
                    name=name,
                    state="ready" if healthy else "unhealthy",
                    pid=proc.pid,
                    port=port,
                    url=url,
                    rss_bytes=procs.rss_bytes(proc),
                    what=spec.what + (f"; {note}" if note else ""),
                )
            )
        return rows

    def _ui(self, name: str, port: int) -> tuple[str, str]:
        """The link to print for a running component, and a note when it has no web UI."""
        base = f"http://{HOST}:{port}"
        probe = SPECS[name].ui
        if probe is None:
            return base + SPECS[name].ui_path, ""
        for path in probe.paths:
            try:
                resp = self._http.get(base + path)
            except httpx.HTTPError:
                continue
            words = " ".join(resp.text.split())  # the page wraps its sentences anywhere
            if resp.status_code == 200 and not (probe.missing_text and probe.missing_text in words):
                return base + path, ""
        return base + probe.fallback, probe.note.format(url=base)

    def processes(self) -> list[psutil.Process]:
        """Every live process of the lab (each component and its descendants)."""
        found = []
        for _, proc in self._running().values():
            found.extend(procs.tree(proc))
        return found

    def close(self) -> None:
        self._http.close()
