"""The lab a drill runs against: the native lab `labctl` started, or any lab given by its URLs.

What a drill needs from its lab, and nothing else: the URLs of the five services (fault admin
API, data check), Prometheus (alerts, the debrief's PromQL steps) and, if it has one, the alert
receiver; the admin token and the service credential; the orders the shop accepted (the data
check's last invariant); and a way to bring crashed services back.

- ``NativeTarget``: the lab in a runtime folder (``make up``, ``make verify``). Its secrets,
  the gateway's log (what the gateway answered 201 for) and the span and log files (the
  debrief's trace and log steps) are files; crashed services are restarted by the lab runner.
- ``UrlLab``: a lab known only by a lab file (TOML, docs/drills.md "Drills against any lab"):
  compose, a Kubernetes namespace behind port-forwards, or a native lab on another machine.
  What the shop accepted is what the drill's own shoppers were answered 201 (Locust's record);
  the debrief's trace and log steps, which read the native lab's files, are not run; crashed
  services come back by the platform's restart policy, and the runner waits for them.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError

from labctl.config import COMPONENTS, SERVICES, LabError
from labctl.drills import data_check
from labctl.drills.restart import restart_services
from labctl.native.lab import NativeLab
from services.kit.faults import crash_hold_path

REQUIRED_URLS = (*SERVICES, "prometheus")
REDEPLOY_SECONDS = 60.0  # a native service's stop and start for a release
OPTIONAL_URLS = ("alertmanager", "receiver")
POLL_SECONDS = 2.0


class DrillLab(Protocol):
    """What the drill runner, verify and rollback use of a lab."""

    python: str  # runs the drill's Locust
    lab_dir: Path | None  # the native runtime folder (span and log files); None: URLs only
    where: str  # for messages: the folder or the lab file

    @property
    def urls(self) -> dict[str, str]: ...
    def admin_token(self) -> str: ...
    def internal_token(self) -> str: ...
    def accepted_orders(self, since: float, checkouts: Path) -> set[str] | None: ...
    def unreachable(self) -> list[str]: ...
    def restart(
        self, out: Callable[[str], None], pause: Callable[[float], None] = time.sleep
    ) -> list[str]: ...
    def redeployed(
        self,
        service: str,
        before: float | None,
        out: Callable[[str], None],
        pause: Callable[[float], None] = time.sleep,
    ) -> None: ...
    def rebuild(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class NativeTarget:
    """The native lab in its runtime folder, as a drill sees it."""

    def __init__(self, lab: NativeLab) -> None:
        self.lab = lab
        self.python = lab.python
        self.lab_dir: Path | None = lab.runtime_dir
        self.where = str(lab.runtime_dir)
        # The ports in the lab's state (a dead component's too): it comes back on its own, so its
        # peers and Prometheus find it again.
        self.ports: dict[str, int] = {}
        for name in COMPONENTS:
            with contextlib.suppress(LabError):
                self.ports[name] = lab.port(name)

    @property
    def urls(self) -> dict[str, str]:
        return self.lab.urls

    def admin_token(self) -> str:
        return self.lab.admin_token()

    def internal_token(self) -> str:
        return self.lab.internal_token()

    def accepted_orders(self, since: float, checkouts: Path) -> set[str] | None:
        """The gateway's own record (its 201s, even one whose answer the shopper never got)."""
        return data_check.accepted_orders(self.lab.log_file("gateway"), since)

    def unreachable(self) -> list[str]:
        """Components this lab should run (not switched off) that are not running."""
        return self.lab.missing()

    def restart(
        self, out: Callable[[str], None], pause: Callable[[float], None] = time.sleep
    ) -> list[str]:
        """The runner is the operator here: it lifts a crash's hold and restarts the service."""
        for service in SERVICES:
            if service not in self.lab.urls:
                crash_hold_path(self.lab.fault_audit_file, service).unlink(missing_ok=True)
        return restart_services(self.lab, self.ports, out)

    def redeployed(
        self,
        service: str,
        before: float | None,
        out: Callable[[str], None],
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        """A bad release or its rollback stops `service`: the runner starts it again once it
        is gone (as a platform would), and returns when it runs with a new start time."""
        url = self.lab.urls.get(service) or f"http://127.0.0.1:{self.ports[service]}"

        def back() -> bool:
            if service not in self.lab.urls:
                self.restart(out, pause)
                return False
            return started_at(url) not in (None, before)

        poll_until(back, REDEPLOY_SECONDS, 0.5, pause,
                   lambda: f"{service} did not restart within {REDEPLOY_SECONDS:.0f}s")  # fmt: skip

    def rebuild(self) -> None:
        self.lab.down()
        self.lab.up()

    def fresh_monitoring(self) -> None:
        self.lab.fresh_monitoring()

    def describe(self) -> dict[str, Any]:
        return {"runtime_dir": str(self.lab.runtime_dir), "urls": self.lab.urls}

    def close(self) -> None:
        self.lab.close()


class LabFile(BaseModel):
    """A lab given by URLs (docs/drills.md): what a lab file may say, and nothing else."""

    model_config = ConfigDict(extra="forbid")

    urls: dict[str, HttpUrl]
    secrets: str = Field(description="KEY=VALUE file with ADMIN_TOKEN and INTERNAL_TOKEN")
    restart_timeout: float = Field(300.0, ge=10, le=1800)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (compose's .env, the Kubernetes overlays' lab-secrets.env)."""
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


class UrlLab:
    """A lab addressed only by URLs: nothing of it is read from this machine's files."""

    lab_dir: Path | None = None

    def __init__(self, file: Path, spec: LabFile, secrets: dict[str, str]) -> None:
        self.file = file
        self.where = str(file)
        self._urls = {name: str(url).rstrip("/") for name, url in spec.urls.items()}
        self._secrets = secrets
        self.restart_timeout = spec.restart_timeout
        self.python = sys.executable

    @classmethod
    def load(cls, path: str | Path) -> UrlLab:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
            spec = LabFile.model_validate(raw)
        except OSError as exc:
            raise LabError(f"cannot read the lab file {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise LabError(f"{file} is not TOML: {exc}") from None
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise LabError(f"{file}: {errors}") from None
        missing = [u for u in REQUIRED_URLS if u not in spec.urls]
        unknown = sorted(set(spec.urls) - set(REQUIRED_URLS) - set(OPTIONAL_URLS))
        if missing or unknown:
            problems = [f"missing urls: {', '.join(missing)}"] if missing else []
            problems += [f"unknown urls: {', '.join(unknown)}"] if unknown else []
            raise LabError(f"{file}: {'; '.join(problems)}")
        secrets_file = (file.parent / spec.secrets).resolve()
        try:
            secrets = read_env_file(secrets_file)
        except OSError as exc:
            raise LabError(f"{file}: cannot read secrets {secrets_file}: {exc.strerror}") from None
        absent = [k for k in ("ADMIN_TOKEN", "INTERNAL_TOKEN") if not secrets.get(k)]
        if absent:
            raise LabError(f"{file}: {secrets_file} has no {' or '.join(absent)}")
        return cls(file, spec, secrets)

    @property
    def urls(self) -> dict[str, str]:
        return dict(self._urls)

    def admin_token(self) -> str:
        return self._secrets["ADMIN_TOKEN"]

    def internal_token(self) -> str:
        return self._secrets["INTERNAL_TOKEN"]

    def accepted_orders(self, since: float, checkouts: Path) -> set[str] | None:
        """What the drill's own shoppers were answered 201 (LOCUST_CHECKOUTS_FILE)."""
        return data_check.checked_out(checkouts, since)

    def _down(self) -> list[str]:
        return [s for s in SERVICES if not _answers(f"{self._urls[s]}/healthz")]

    def unreachable(self) -> list[str]:
        down = self._down()
        if not _answers(f"{self._urls['prometheus']}/-/ready"):
            down.append("prometheus")
        return down

    def restart(
        self, out: Callable[[str], None], pause: Callable[[float], None] = time.sleep
    ) -> list[str]:
        """Wait, bounded, for the platform to bring back whatever is down; the ones it did.

        `pause` paces the poll (the runner's wakes at once on Ctrl-C)."""
        down = self._down()
        if not down:
            return []
        out(f"  waiting for the platform to restart {', '.join(down)}")
        poll_until(
            lambda: not set(down) & set(self._down()),
            self.restart_timeout,
            POLL_SECONDS,
            pause,
            lambda: (
                f"{', '.join(down)} did not all come back within "
                f"{self.restart_timeout:.0f}s: the platform should restart a crashed service "
                "(compose: restart: unless-stopped; Kubernetes: restartPolicy Always)"
            ),
        )
        return down

    def redeployed(
        self,
        service: str,
        before: float | None,
        out: Callable[[str], None],
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wait, bounded, until the platform has restarted `service` (a new start time)."""
        out(f"  waiting for the platform to restart {service}")
        poll_until(
            lambda: started_at(self._urls[service]) not in (None, before),
            self.restart_timeout,
            POLL_SECONDS,
            pause,
            lambda: (
                f"{service} did not come back within {self.restart_timeout:.0f}s after it "
                "stopped for a release: the platform should restart it"
            ),
        )

    def rebuild(self) -> None:
        raise LabError(f"a lab given by URLs ({self.file}) cannot be rebuilt from here")

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.file), "urls": self.urls}

    def close(self) -> None:
        return None


def poll_until(
    done: Callable[[], bool],
    seconds: float,
    interval: float,
    pause: Callable[[float], None],
    failure: Callable[[], str],
) -> None:
    """Poll `done` every `interval` until it holds; LabError(failure()) after `seconds`
    (bounded by the clock and by a count)."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / interval) + 2):
        if done():
            return
        if time.monotonic() > deadline:
            break
        pause(interval)
    raise LabError(failure())


def _gauge(url: str, name: str) -> float | None:
    """An unlabelled sample of the service's /metrics, None while it does not answer."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=2, trust_env=False).text
    except httpx.HTTPError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else None


def started_at(url: str) -> float | None:
    """The service process's start time, None while it does not answer."""
    return _gauge(url, "process_start_time_seconds")


def in_flight(url: str) -> float | None:
    """Requests the service is serving now, None while it does not answer."""
    return _gauge(url, "http_requests_in_flight")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def as_target(lab: NativeLab | DrillLab) -> DrillLab:
    return NativeTarget(lab) if isinstance(lab, NativeLab) else lab


def open_lab(lab_file: str | None, native: Callable[[], NativeLab]) -> DrillLab:
    """``--lab FILE`` if given, else the native lab ``native()`` opens."""
    return UrlLab.load(lab_file) if lab_file else NativeTarget(native())
