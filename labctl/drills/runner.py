"""Running one drill against a running native lab: load, fault timeline, alerts, rollback, checks.

The runner owns three things it must give back whatever happens (end, Ctrl-C, SIGTERM, error):
the faults it set (cleared on every service), the services a crash fault took down (restarted
through the lab runner on the same port, so peers and Prometheus find them again) and the Locust
process it started. Alerts are read from Prometheus (``/api/v1/alerts``: exact activeAt, so a
firing time is activeAt + the rule's ``for``) and, for the journal, from the alert receiver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from labctl import procs
from labctl.config import REPO_ROOT, SERVICES, LabError, Ports
from labctl.data_check import accepted_orders, check_data, parse_ts, wait_and_fetch
from labctl.drill_model import Drill, FaultStep
from labctl.native import NativeLab

POLL_SECONDS = 2.0
PROGRESS_SECONDS = 10.0
QUIET_TIMEOUT = 300.0
DATA_CHECK_TIMEOUT = 150.0
HTTP_TIMEOUT = 5.0


class Stop(Exception):
    """The run was interrupted (Ctrl-C or SIGTERM): clean up, write what we have."""


@dataclass
class AlertRecord:
    """One alert (name + labels) seen during the run, with its firing intervals."""

    name: str
    labels: dict[str, str]
    active_at: float
    fired_at: float | None = None
    intervals: list[list[float | None]] = field(default_factory=list)
    carried: bool = False  # already active before the drill started: not the drill's doing

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "labels": self.labels,
            "active_at": self.active_at,
            "fired_at": self.fired_at,
            "intervals": self.intervals,
            "carried": self.carried,
        }


class Prometheus:
    """The few Prometheus API calls a drill needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT, trust_env=False)
        self._for: dict[str, float] | None = None

    def alerts(self) -> list[dict[str, Any]]:
        body = self.http.get("/api/v1/alerts").json()
        return body["data"]["alerts"]

    def rule_for(self) -> dict[str, float]:
        """Seconds of ``for:`` per alert name (the longest, when a name has several rules)."""
        if self._for is None:
            found: dict[str, float] = {}
            body = self.http.get("/api/v1/rules", params={"type": "alert"}).json()
            for group in body["data"]["groups"]:
                for rule in group["rules"]:
                    name = rule["name"]
                    found[name] = max(found.get(name, 0.0), float(rule.get("duration", 0)))
            self._for = found
        return self._for

    def query_range(self, expr: str, start: float, end: float, step: float = 5.0) -> list[dict]:
        resp = self.http.get(
            "/api/v1/query_range",
            params={"query": expr, "start": start, "end": end, "step": step},
            timeout=30,
        )
        body = resp.json()
        if body.get("status") != "success":
            return []
        return body["data"]["result"]

    def close(self) -> None:
        self.http.close()


class AlertTracker:
    """Turns polls of /api/v1/alerts into firing intervals per alert."""

    def __init__(self, prom: Prometheus, started: float) -> None:
        self.prom = prom
        self.started = started
        self.records: dict[tuple[str, tuple[tuple[str, str], ...]], AlertRecord] = {}
        self.pending: list[str] = []
        self.errors = 0

    def poll(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            alerts = self.prom.alerts()
            rule_for = self.prom.rule_for()
        except (httpx.HTTPError, ValueError, KeyError):
            self.errors += 1
            return
        firing_keys = set()
        self.pending = []
        for alert in alerts:
            labels = dict(alert["labels"])
            name = labels.get("alertname", "")
            if alert["state"] != "firing":
                self.pending.append(name)
                continue
            key = (name, tuple(sorted(labels.items())))
            firing_keys.add(key)
            active_at = parse_ts(alert["activeAt"])
            fired_at = min(now, active_at + rule_for.get(name, 0.0))
            record = self.records.get(key)
            if record is None:
                record = self.records[key] = AlertRecord(
                    name, labels, active_at, carried=active_at < self.started
                )
            if not record.intervals or record.intervals[-1][1] is not None:
                record.intervals.append([fired_at, None])
                if record.fired_at is None:
                    record.fired_at = fired_at
        for key, record in self.records.items():
            if key not in firing_keys and record.intervals and record.intervals[-1][1] is None:
                record.intervals[-1][1] = now

    def close(self, now: float) -> None:
        for record in self.records.values():
            if record.intervals and record.intervals[-1][1] is None:
                record.intervals[-1][1] = now

    def fired(self, include_carried: bool = False) -> list[AlertRecord]:
        return sorted(
            (r for r in self.records.values() if r.fired_at and (include_carried or not r.carried)),
            key=lambda r: r.fired_at or 0,
        )

    def firing_now(self) -> list[AlertRecord]:
        return [r for r in self.records.values() if r.intervals and r.intervals[-1][1] is None]


class FaultClient:
    """The admin API of every service (bearer token), tolerant of a service that is down."""

    def __init__(self, urls: dict[str, str], token: str) -> None:
        self.urls = urls
        self.http = httpx.Client(
            timeout=HTTP_TIMEOUT, trust_env=False, headers={"Authorization": f"Bearer {token}"}
        )

    def set(self, service: str, fault: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"{self.urls[service]}/admin/faults", json={"fault": fault})
        if resp.status_code != 201:
            raise LabError(f"{service} refused fault {fault}: {resp.status_code} {resp.text}")
        return resp.json()

    def clear(self, service: str, fault_id: str | None = None) -> bool:
        path = "/admin/faults" + (f"/{fault_id}" if fault_id else "")
        try:
            resp = self.http.delete(f"{self.urls[service]}{path}")
        except httpx.HTTPError:
            return False
        return resp.status_code in (200, 404)

    def clear_all(self) -> dict[str, bool]:
        return {service: self.clear(service) for service in self.urls}

    def close(self) -> None:
        self.http.close()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def restart_services(lab: NativeLab, ports: dict[str, int], out: Callable[[str], None]) -> list:
    """Start services that are down again, each on the port it had (peers keep their URLs)."""
    running = lab.urls
    down = [s for s in SERVICES if s not in running or not healthy(running[s])]
    dead = [s for s in down if s not in running]
    # A service the lab lost track of but whose port still answers /healthz is alive: never start
    # a second copy on a port it holds (that used to stop the whole lab as "stray processes").
    alive = [s for s in dead if ports.get(s) and _answers(f"http://127.0.0.1:{ports[s]}")]
    for service in alive:
        out(f"  {service} still answers on port {ports[service]}: not restarting it")
    dead = [s for s in dead if s not in alive]
    if not dead:
        return []
    out(f"  restarting {', '.join(dead)} through the lab runner")
    values = {c: ports.get(c, 0) for c in Ports().values}
    restarter = NativeLab(
        lab.runtime_dir,
        Ports(values),
        root=lab.root,
        env=lab.env,
        users=lab.users,
        spawn_rate=lab.spawn_rate,
        load="locust" in running,
        python=lab.python,
        timeout=lab.timeout,
        out=lambda _line: None,
    )
    try:
        restarter.up()
    finally:
        restarter.close()
    return dead


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@contextlib.contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the loop notices within a poll); handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Locust:
    """The drill's own headless Locust with the drill's shape, in its own process group."""

    def __init__(self, drill: Drill, gateway: str, run_dir: Path, python: str) -> None:
        shape = REPO_ROOT / "loadtest" / "shapes" / f"{drill.load.shape}.py"
        self.argv = [
            python, "-m", "locust",
            "-f", f"{REPO_ROOT / 'loadtest' / 'locustfile.py'},{shape}",
            "--headless", "--host", gateway, "--only-summary",
            "--csv", str(run_dir / "locust"),
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "LOCUST_SHAPE_DURATION": str(drill.load.duration),
            "LOCUST_SHAPE_USERS": str(drill.load.users),
            "LOCUST_METRICS_PORT": "off",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        self.log = run_dir / "locust.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.stop([psutil.Process(self.proc.pid)], grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@dataclass
class RunResult:
    drill: Drill
    run_dir: Path
    journal: dict[str, Any]
    tracker: AlertTracker
    verdict: str
    failures: list[str]


class DrillRunner:
    """Runs one drill. ``out`` gets progress lines (blind mode sends them to a log file)."""

    def __init__(
        self,
        lab: NativeLab,
        drill: Drill,
        run_dir: Path,
        *,
        out: Callable[[str], None] = print,
        stop: threading.Event | None = None,
        wait_quiet: bool = False,
        blind: bool = False,
    ) -> None:
        self.lab = lab
        self.drill = drill
        self.run_dir = run_dir
        self.out = out
        self.stop = stop or threading.Event()
        self.wait_quiet = wait_quiet
        self.blind = blind
        urls = lab.urls
        missing = [c for c in (*SERVICES, "prometheus") if c not in urls]
        if missing:
            raise LabError(
                f"the lab in {lab.runtime_dir} is not running ({', '.join(missing)} missing): "
                "start it with `make up`"
            )
        self.urls = urls
        self.ports = {name: _port(url) for name, url in urls.items()}
        self.prom = Prometheus(urls["prometheus"])
        self.faults = FaultClient({s: urls[s] for s in SERVICES}, lab.admin_token())
        self.events: list[dict[str, Any]] = []
        self.pace = threading.Event()

    # ----------------------------------------------------------------- helpers

    def event(self, what: str, **fields: Any) -> None:
        self.events.append({"t": time.time(), "event": what, **fields})

    def _wait(self, seconds: float) -> None:
        """Pace a loop; wakes at once on Ctrl-C."""
        if self.stop.wait(seconds):
            raise Stop()

    def wait_for_quiet(self, timeout: float = QUIET_TIMEOUT) -> bool:
        """Bounded wait until no alert is pending or firing, so one drill cannot blame the next."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_SECONDS) + 2):
            try:
                active = [a["labels"]["alertname"] for a in self.prom.alerts()]
            except (httpx.HTTPError, ValueError, KeyError):
                active = ["<prometheus unreachable>"]
            if not active:
                return True
            if time.monotonic() > deadline:
                self.out(f"  still active after {timeout:.0f}s: {', '.join(sorted(set(active)))}")
                return False
            self._wait(POLL_SECONDS * 2.5)
        return False

    # --------------------------------------------------------------------- run

    def run(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        drill = self.drill
        journal: dict[str, Any] = {
            "run_id": self.run_dir.name,
            "drill": drill.id if not self.blind else None,
            "lab": {"runtime_dir": str(self.lab.runtime_dir), "urls": self.urls},
        }
        interrupted = False
        error: str | None = None
        locust = Locust(drill, self.urls["gateway"], self.run_dir, self.lab.python)
        active: dict[int, tuple[str, str]] = {}  # step index -> (service, fault id)
        crashed: set[str] = set()
        tracker: AlertTracker | None = None
        t0 = time.time()
        with interruptible(self.stop):
            try:
                if self.wait_quiet:
                    self.out("  waiting for the alerts of earlier runs to resolve")
                    journal["quiet_before"] = self.wait_for_quiet()
                self.faults.clear_all()
                t0 = time.time()
                tracker = AlertTracker(self.prom, t0)
                journal["started_at"] = t0
                locust.start()
                self.event("load_started", shape=drill.load.shape, users=drill.load.users,
                           duration=drill.load.duration)  # fmt: skip
                self._timeline(t0, locust, tracker, active, crashed)
            except Stop:
                interrupted = True
                self.out("  interrupted: rolling back")
                self.event("interrupted")
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self.out(f"  error: {error}; rolling back")
                self.event("error", error=error)
            finally:
                self._rollback(locust, active)
            tracker = tracker or AlertTracker(self.prom, t0)
            load_end = time.time()
            data: dict[str, Any] = {"ok": None, "skipped": "interrupted"}
            if not interrupted:
                try:
                    data = self.data_check(t0, tracker)
                except Stop:
                    interrupted = True
                    data = {"ok": None, "skipped": "interrupted during the data check"}
            tracker.poll()
            end = time.time()
            tracker.close(end)
        journal.update(
            ended_at=end,
            load_ended_at=load_end,
            interrupted=interrupted,
            error=error,
            faults=[
                {"service": s.service, "fault": s.body(), "at": t0 + s.at, "until": t0 + s.end}
                for s in drill.timeline
            ],
            events=self.events,
            alerts=[r.as_dict() for r in tracker.fired(include_carried=True)],
            notifications=self._notifications(t0),
            data_check=data,
            prometheus_errors=tracker.errors,
        )
        verdict, failures, rows = evaluate(drill, tracker, t0, data, interrupted, error)
        journal.update(verdict=verdict, failures=failures, expected=rows)
        journal["time_to_detect"] = time_to_detect(drill, tracker, t0)
        self.prom_series = self._series(t0, end)
        return RunResult(drill, self.run_dir, journal, tracker, verdict, failures)

    def _timeline(
        self,
        t0: float,
        locust: Locust,
        tracker: AlertTracker,
        active: dict[int, tuple[str, str]],
        crashed: set[str],
    ) -> None:
        drill = self.drill
        todo: list[tuple[float, str, int]] = []
        for i, step in enumerate(drill.timeline):
            todo += [(step.at, "set", i), (step.end, "clear", i)]
        todo.sort()
        last_progress = -PROGRESS_SECONDS
        rounds = int(drill.load.duration / 0.5) + 600  # bound besides the clock
        for _ in range(rounds):
            elapsed = time.time() - t0
            while todo and todo[0][0] <= elapsed:
                _, action, i = todo.pop(0)
                step = drill.timeline[i]
                if action == "set":
                    self._set(i, step, active, crashed)
                else:
                    self._clear(i, step, active, crashed)
            tracker.poll()
            self._note_first_page(t0, tracker)
            if elapsed - last_progress >= PROGRESS_SECONDS:
                last_progress = elapsed
                self.out(self._progress(elapsed, tracker))
            if elapsed >= drill.load.duration or not locust.running():
                if locust.running():
                    locust.stop()
                if elapsed < drill.load.duration - 5:
                    self.out("  note: Locust ended before the drill's load duration")
                break
            self._wait(min(POLL_SECONDS, max(0.1, (todo[0][0] - elapsed) if todo else 1e9)))
        self.event("load_stopped")

    def _note_first_page(self, t0: float, tracker: AlertTracker) -> None:
        """Blind mode scores from the first page: leave its time where `answer` finds it."""
        path = self.run_dir / "first_page"
        if path.exists():
            return
        start = t0 + (self.drill.fault_start or 0)
        pages = [r.fired_at for r in tracker.fired() if r.severity == "page" and r.fired_at]
        pages = [p for p in pages if p >= start - 5]
        if pages:
            path.write_text(f"{min(pages)}\n", encoding="ascii")

    def _phase(self, elapsed: float) -> str:
        start, end = self.drill.fault_start, self.drill.fault_end
        if start is None or end is None:
            return "observe"
        if elapsed < start:
            return "baseline"
        return "fault" if elapsed < end else "recovery"

    def _progress(self, elapsed: float, tracker: AlertTracker) -> str:
        firing = sorted({r.name for r in tracker.firing_now() if not r.carried})
        pending = sorted(set(tracker.pending))
        text = (
            f"[{self._phase(elapsed):<8}] {elapsed:5.0f}s / {self.drill.load.duration:.0f}s"
            f"  firing: {', '.join(firing) or '-'}"
        )
        if pending:
            text += f"  pending: {', '.join(pending)}"
        return text

    def _set(self, i: int, step: FaultStep, active: dict, crashed: set[str]) -> None:
        fault = step.body()
        # The TTL outlives the step a little: the runner clears it on time, the TTL is the
        # safety net if the runner itself dies.
        fault.setdefault("ttl_seconds", min(3600, step.for_ + 30))
        reply = self.faults.set(step.service, fault)
        active[i] = (step.service, reply["id"])
        if step.kind == "crash":
            crashed.add(step.service)
        label = "a fault" if self.blind else f"{step.kind} on {step.service}"
        self.out(f"  injected {label}")
        self.event("fault_set", service=step.service, fault=fault, id=reply["id"])

    def _clear(self, i: int, step: FaultStep, active: dict, crashed: set[str]) -> None:
        service, fault_id = active.pop(i, (step.service, None))
        if step.kind == "crash":
            restarted = restart_services(self.lab, self.ports, self.out)
            crashed.discard(service)
            self.event("service_restarted", services=restarted)
        elif fault_id:
            self.faults.clear(service, fault_id)
        self.out("  cleared a fault" if self.blind else f"  cleared {step.kind} on {service}")
        self.event("fault_cleared", service=service, id=fault_id)

    def _rollback(self, locust: Locust, active: dict) -> None:
        """Faults off everywhere, crashed services back, our Locust gone: always."""
        with contextlib.suppress(Exception):
            locust.stop()
        cleared = self.faults.clear_all()
        restarted: list[str] = []
        try:
            restarted = restart_services(self.lab, self.ports, self.out)
        except LabError as exc:
            self.out(f"  could not restart a service: {exc}")
        if restarted:
            self.faults.clear_all()
        active.clear()
        self.event("rollback", cleared=cleared, restarted=restarted)

    # ------------------------------------------------------------- data check

    def data_check(self, since: float, tracker: AlertTracker) -> dict[str, Any]:
        """Nothing lost, nobody charged wrongly: the invariants of labctl.data_check."""
        self.out("  data check: waiting for orders and confirmations to settle")
        accepted = accepted_orders(self.lab.log_file("gateway"), since)

        def pause(seconds: float) -> None:
            tracker.poll()
            self._wait(seconds)

        with httpx.Client(timeout=10, trust_env=False) as http:
            state = wait_and_fetch(http, self.urls, since, DATA_CHECK_TIMEOUT, pause, POLL_SECONDS)
        return check_data(accepted, state)

    def _notifications(self, since: float) -> list[dict[str, Any]]:
        url = self.urls.get("receiver")
        if not url:
            return []
        try:
            records = httpx.get(
                f"{url}/alerts", params={"since": since}, timeout=HTTP_TIMEOUT, trust_env=False
            ).json()
        except (httpx.HTTPError, ValueError):
            return []
        return [
            {
                "received_at": r.get("received_unix"),
                "channel": r.get("channel"),
                "status": r.get("status"),
                "alertnames": r.get("alertnames"),
            }
            for r in records
        ]

    def _series(self, start: float, end: float) -> dict[str, list[dict]]:
        queries = {
            "error_ratio": 'sum by (service) (rate(http_requests_total{status=~"5.."}[20s]))'
            " / sum by (service) (rate(http_requests_total[20s]))",
            "p99": "histogram_quantile(0.99, sum by (service, le) "
            "(rate(http_request_duration_seconds_bucket[20s])))",
            "burn_rate": "slo:burn_rate:5m",
        }
        found = {}
        for name, expr in queries.items():
            try:
                found[name] = self.prom.query_range(expr, start - 30, end, 5)
            except (httpx.HTTPError, ValueError):
                found[name] = []
        return found

    def close(self) -> None:
        self.prom.close()
        self.faults.close()


# --------------------------------------------------------------------- pure parts


def matches(record: AlertRecord, name: str, labels: dict[str, str]) -> bool:
    return record.name == name and all(record.labels.get(k) == v for k, v in labels.items())


def evaluate(
    drill: Drill,
    tracker: AlertTracker,
    t0: float,
    data: dict[str, Any],
    interrupted: bool,
    error: str | None,
) -> tuple[str, list[str], list[dict[str, Any]]]:
    """PASS/FAIL with reasons, and one row per expected alert (fired? after how long?)."""
    failures: list[str] = []
    rows = []
    start = t0 + (drill.fault_start or 0)
    fired = tracker.fired()
    for expected in drill.expected_alerts:
        hits = [r for r in fired if matches(r, expected.alert, expected.labels)]
        hits = [r for r in hits if (r.fired_at or 0) >= start - 5]
        detect = min((r.fired_at or 0) for r in hits) - start if hits else None
        ok = detect is not None and detect <= expected.within
        rows.append(
            {
                "alert": expected.alert,
                "labels": expected.labels,
                "within": expected.within,
                "detected_after": None if detect is None else round(max(detect, 0.0), 1),
                "ok": ok,
            }
        )
        if not ok:
            label = expected.alert + (f"{expected.labels}" if expected.labels else "")
            if detect is None:
                failures.append(f"{label} did not fire")
            else:
                failures.append(f"{label} fired after {detect:.0f}s > {expected.within:.0f}s")
    for record in fired:
        if drill.is_silent(record.name):
            failures.append(f"forbidden alert fired: {record.name} {_brief(record.labels)}")
    if data.get("ok") is False:
        failures += [f"data check: {p}" for p in data.get("problems", [])]
    if interrupted:
        failures.append("interrupted")
    if error:
        failures.append(f"error: {error}")
    return ("PASS" if not failures else "FAIL"), failures, rows


def time_to_detect(drill: Drill, tracker: AlertTracker, t0: float) -> float | None:
    """Seconds from the first fault to the first page (None: nothing paged, or no fault)."""
    if drill.fault_start is None:
        return None
    start = t0 + drill.fault_start
    pages = [r.fired_at for r in tracker.fired() if r.severity == "page" and r.fired_at]
    pages = [p for p in pages if p >= start - 5]
    return round(max(0.0, min(pages) - start), 1) if pages else None


def _brief(labels: dict[str, str]) -> str:
    keep = {k: v for k, v in labels.items() if k in ("service", "peer", "route", "slo")}
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(keep.items())) + "}"


def python() -> str:
    return sys.executable
