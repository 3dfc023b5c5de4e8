"""Running one drill against a running lab: load, fault timeline, alerts, rollback, checks.

The lab is a ``labctl.drills.target.DrillLab``: the native lab, or any lab given by its URLs.
The runner owns three things it must give back whatever happens (end, Ctrl-C, SIGTERM, error):
the faults it set (cleared on every service), the services a crash fault took down (natively
restarted through the lab runner on the same port, so peers and Prometheus find them again; on a
platform, waited for until its restart policy has them back) and the Locust process it started.
Alerts are read from Prometheus (``/api/v1/alerts``: exact activeAt, so a firing time is
activeAt + the rule's ``for``) and, for the journal, from the alert receiver.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from labctl.config import HTTP_TIMEOUT, SERVICES, LabError
from labctl.drills.data_check import check_data, wait_and_fetch
from labctl.drills.faults import FaultClient
from labctl.drills.journal import DataCheck, FaultWindow, Journal, Notification, StepResult
from labctl.drills.locust import Locust
from labctl.drills.model import Drill, FaultStep
from labctl.drills.native_steps import check_steps, window_of
from labctl.drills.prometheus import AlertTracker, Prometheus
from labctl.drills.target import DrillLab, as_target, started_at
from labctl.drills.verdict import evaluate, settled, time_to_detect
from labctl.native.lab import NativeLab

POLL_SECONDS = 2.0
PROGRESS_SECONDS = 10.0
QUIET_TIMEOUT = 300.0
DATA_CHECK_TIMEOUT = 150.0


class Stop(Exception):
    """The run was interrupted (Ctrl-C or SIGTERM): clean up, write what we have."""


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


@dataclass
class RunResult:
    drill: Drill
    run_dir: Path
    journal: Journal
    tracker: AlertTracker
    series: dict[str, list[dict]] = field(default_factory=dict)  # Prometheus ranges, for the plot

    @property
    def verdict(self) -> str:
        return self.journal.verdict

    @property
    def failures(self) -> list[str]:
        return self.journal.failures


class DrillRunner:
    """Runs one drill. ``out`` gets progress lines (blind mode sends them to a log file)."""

    def __init__(
        self,
        lab: NativeLab | DrillLab,
        drill: Drill,
        run_dir: Path,
        *,
        out: Callable[[str], None] = print,
        stop: threading.Event | None = None,
        wait_quiet: bool = False,
        blind: bool = False,
        end_when_settled: bool = False,
    ) -> None:
        self.lab = as_target(lab)
        self.drill = drill
        self.run_dir = run_dir
        self.out = out
        self.stop = stop or threading.Event()
        self.wait_quiet = wait_quiet
        self.blind = blind
        self.end_when_settled = end_when_settled  # verify: labctl.drills.verdict.settled
        missing = self.lab.unreachable()
        if missing:
            raise LabError(
                f"the lab in {self.lab.where} is not running ({', '.join(missing)} missing): "
                "start it with `make up`"
            )
        urls = self.lab.urls
        self.urls = urls
        self.prom = Prometheus(urls["prometheus"])
        self.faults = FaultClient({s: urls[s] for s in SERVICES}, self.lab.admin_token())
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
        quiet_before: bool | None = None
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
                    quiet_before = self.wait_for_quiet()
                self.faults.clear_all()
                t0 = time.time()
                tracker = AlertTracker(self.prom, t0)
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
            data = DataCheck(ok=None, skipped="interrupted")
            if not interrupted:
                try:
                    data = self.data_check(t0, tracker, locust.checkouts)
                except Stop:
                    interrupted = True
                    data = DataCheck(ok=None, skipped="interrupted during the data check")
            native: list[StepResult] = []
            if not (interrupted or error or self.blind):  # blind: the steps name the answer
                native = check_steps(
                    drill, self.lab.lab_dir, self.prom, window_of(drill, t0, load_end)
                )
            tracker.poll()
            end = time.time()
            tracker.close(end)
        verdict, failures, rows = evaluate(drill, tracker, t0, data, interrupted, error, native)
        journal = Journal(
            run_id=self.run_dir.name,
            drill=drill.id if not self.blind else None,
            lab=self.lab.describe(),
            started_at=t0,
            ended_at=end,
            load_ended_at=load_end,
            quiet_before=quiet_before,
            interrupted=interrupted,
            error=error,
            faults=[
                FaultWindow(
                    service=s.service, fault=s.body(), at=t0 + s.at, until=min(t0 + s.end, load_end)
                )
                for s in drill.timeline
                if t0 + s.at < load_end
            ],
            events=self.events,
            alerts=[r.seen() for r in tracker.fired(include_carried=True)],
            notifications=self._notifications(t0),
            data_check=data,
            prometheus_errors=tracker.errors,
            verdict=verdict,
            failures=failures,
            expected=rows,
            native=native,
            time_to_detect=time_to_detect(drill, tracker, t0),
        )
        return RunResult(drill, self.run_dir, journal, tracker, self._series(t0, end))

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
            if self.end_when_settled and settled(drill, tracker, t0, elapsed):
                self.out(f"  settled at {elapsed:.0f}s: every expected alert fired; load ends")
                self.event("load_settled", elapsed=round(elapsed, 1))
                locust.stop()
                break
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
        # safety net if the runner itself dies. A crash cannot be cleared (the process is gone):
        # its TTL is the step, how long a platform that restarts it sees a crash loop.
        ttl = step.for_ if step.kind == "crash" else step.for_ + 30
        fault.setdefault("ttl_seconds", min(3600, ttl))
        before = started_at(self.urls[step.service])
        reply = self.faults.set(step.service, fault)
        active[i] = (step.service, reply["id"])
        if step.kind == "bad_release":  # a deploy: the service restarts as the new version
            self.lab.redeployed(step.service, before, self.out, self._wait)
            self.event("service_redeployed", service=step.service)
        if step.kind == "crash":
            crashed.add(step.service)
        label = "a fault" if self.blind else f"{step.kind} on {step.service}"
        self.out(f"  injected {label}")
        self.event("fault_set", service=step.service, fault=fault, id=reply["id"])

    def _clear(self, i: int, step: FaultStep, active: dict, crashed: set[str]) -> None:
        service, fault_id = active.pop(i, (step.service, None))
        if step.kind == "crash":
            restarted = self.lab.restart(self.out, self._wait)
            crashed.discard(service)
            self.event("service_restarted", services=restarted)
        elif fault_id:
            before = started_at(self.urls[service])
            self.faults.clear(service, fault_id)
            if step.kind == "bad_release":  # its rollback is another restart
                self.lab.redeployed(service, before, self.out, self._wait)
                self.event("service_redeployed", service=service)
        self.out("  cleared a fault" if self.blind else f"  cleared {step.kind} on {service}")
        self.event("fault_cleared", service=service, id=fault_id)

    def _rollback(self, locust: Locust, active: dict) -> None:
        """Faults off everywhere, crashed services back, our Locust gone: always."""
        with contextlib.suppress(Exception):
            locust.stop()
        releases = {
            service: started_at(self.urls[service])
            for i, (service, _) in active.items()
            if self.drill.timeline[i].kind == "bad_release"
        }
        cleared = self.faults.clear_all()
        for service, before in releases.items():  # each rolls back: a restart
            try:
                self.lab.redeployed(service, before, self.out)
            except LabError as exc:
                self.out(f"  {exc}")
        restarted: list[str] = []
        try:
            restarted = self.lab.restart(self.out)
        except LabError as exc:
            self.out(f"  could not restart a service: {exc}")
        if restarted:
            self.faults.clear_all()
        active.clear()
        self.event("rollback", cleared=cleared, restarted=restarted)

    # ------------------------------------------------------------- data check

    def data_check(self, since: float, tracker: AlertTracker, checkouts: Path) -> DataCheck:
        """Nothing lost, nobody charged wrongly: the invariants of labctl.drills.data_check."""
        self.out("  data check: waiting for orders and confirmations to settle")
        accepted = self.lab.accepted_orders(since, checkouts)

        def pause(seconds: float) -> None:
            tracker.poll()
            self._wait(seconds)

        # The services' data is behind their internal routes: the lab's service credential.
        internal = {"X-Internal-Token": self.lab.internal_token()}
        with httpx.Client(timeout=10, trust_env=False, headers=internal) as http:
            state = wait_and_fetch(http, self.urls, since, DATA_CHECK_TIMEOUT, pause, POLL_SECONDS)
        return DataCheck(**check_data(accepted, state))

    def _notifications(self, since: float) -> list[Notification]:
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
            Notification(
                received_at=r.get("received_unix"),
                channel=r.get("channel"),
                status=r.get("status"),
                alertnames=r.get("alertnames"),
            )
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
