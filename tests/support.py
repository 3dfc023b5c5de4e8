"""Test helpers: the five services in process (ASGI) and as real uvicorn processes."""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import psutil

from labctl.native.procs import listening_ports
from services.kit import Settings
from services.kit.service_auth import SHOPPER_TOKEN_ALGORITHM, SHOPPER_TOKEN_ISSUER
from services.topology import CALLED as PEERS
from services.topology import SERVICES as SERVICE_NAMES
from services.topology import start_waves

ROOT = Path(__file__).resolve().parent.parent

# The services refuse the secrets that ship in the repository (docs/security.md): the tests run
# them with secrets of their own, random per test session, like `labctl up` does per lab.
TEST_SECRETS = {
    "jwt_secret": secrets.token_urlsafe(32),
    "admin_token": secrets.token_urlsafe(32),
    "internal_token": secrets.token_urlsafe(32),
}
SECRET_ENV = {name.upper(): value for name, value in TEST_SECRETS.items()}
ADMIN = {"Authorization": f"Bearer {TEST_SECRETS['admin_token']}"}
"""The admin API's header for services started by these helpers."""
INTERNAL = {"X-Internal-Token": TEST_SECRETS["internal_token"]}
"""The service credential: what a peer sends to an internal route."""


def shopper_token(user: str, secret: str = TEST_SECRETS["jwt_secret"], ttl: int = 600) -> str:
    """A token for `user` signed like auth signs one (for calling order directly)."""
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + ttl, "iss": SHOPPER_TOKEN_ISSUER}
    return jwt.encode(claims, secret, algorithm=SHOPPER_TOKEN_ALGORITHM)


def as_shopper(user: str, secret: str = TEST_SECRETS["jwt_secret"]) -> dict[str, str]:
    """Headers of a call to order on behalf of `user`: what the gateway sends (with INTERNAL)."""
    return {**INTERNAL, "Authorization": f"Bearer {shopper_token(user, secret)}"}


def fast_settings(tmp: Path, **overrides) -> Settings:
    """Settings for tests: own data dir, no artificial processor latency unless asked, the
    session's own secrets (TEST_SECRETS)."""
    values = {
        **TEST_SECRETS,
        "data_dir": tmp,
        "payment_latency_median_ms": 0,
        "notification_latency_median_ms": 0,
        "notification_failure_rate": 0,
        "notification_poll_seconds": 0.05,
        "http_retry_backoff_seconds": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def in_process(settings: Settings, names=SERVICE_NAMES) -> AsyncIterator[dict]:
    """Build the named services in this process, wired to each other through ASGI transports,
    with their lifespans running. Yields {name: httpx.AsyncClient}; each client sends the
    service credential (as a peer would), so tests reach the internal routes."""
    apps = {n: importlib.import_module(f"services.{n}.main").create_app(settings) for n in names}
    # As a server does: an exception a route raises is a 500 answer (the kit logs it), not an
    # exception in the caller.
    transports = {
        n: httpx.ASGITransport(app=a, raise_app_exceptions=False) for n, a in apps.items()
    }
    for app in apps.values():
        app.state.kit.transports.update(
            {peer: t for peer, t in transports.items() if peer in PEERS}
        )
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        clients = {}
        for n in names:
            clients[n] = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=transports[n],
                    base_url="http://127.0.0.1",
                    headers={"X-Internal-Token": settings.internal_token},
                )
            )
        clients["_apps"] = apps
        yield clients


def require_binary(name: str) -> str:
    """A system binary the tests need; a clear failure (not a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        import pytest

        pytest.fail(
            f"{name} not found on PATH: apt-get install prometheus prometheus-alertmanager "
            "(or run `make system-deps`)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


@dataclass
class ServiceProcs:
    """The five services as real uvicorn processes on free loopback ports."""

    workdir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = SERVICE_NAMES
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def span_file(self, name: str) -> Path:
        return self.workdir / "traces" / f"{name}.jsonl"

    def log_file(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def start(self) -> None:
        """Start the services on OS-chosen ports (uvicorn --port 0) and read each port back.

        Not `--fd`: uvicorn treats an inherited fd as a Unix socket and never sets TCP_NODELAY,
        which costs ~40 ms per response (delayed ACK). Peers start first so that each service
        is given its peers' real URLs.
        """
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        for wave in start_waves(self.names):
            for name in wave:
                self._spawn(name)
            for name in wave:
                self.ports[name] = wait_until(
                    lambda n=name: self._bound_port(n), timeout=60, what=f"{name} listening"
                )
        for name in self.names:
            wait_until(lambda n=name: self._healthy(n), timeout=60, what=f"{name} /healthz")

    def _spawn(self, name: str) -> None:
        env = {
            **os.environ,
            "DATA_DIR": str(self.workdir / "data"),
            "SPAN_FILE": str(self.span_file(name)),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            **SECRET_ENV,
            **{f"{p.upper()}_URL": self.url(p) for p in PEERS if p in self.ports},
            **self.env_overrides,
        }
        with self.log_file(name).open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    f"services.{name}.main:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-access-log",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _bound_port(self, name: str) -> int | None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {self.log_file(name).read_text()[-2000:]}")
        ports = listening_ports(psutil.Process(proc.pid))
        return min(ports) if ports else None

    def _healthy(self, name: str) -> bool:
        self._bound_port(name)  # raises if it died
        return httpx.get(self.url(name) + "/healthz", timeout=1).status_code == 200

    def pause(self, name: str) -> None:
        """SIGSTOP: the process holds its port but answers nothing (a hung host)."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def crash_and_restart(self, name: str, **env: str) -> None:
        """SIGKILL (no shutdown code runs), then the same service on the same data, on a new
        port (its callers keep the old URL: use it for what runs inside the service)."""
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=10)
        self.restart(name, **env)

    def restart(self, name: str, **env: str) -> None:
        """Start a service whose process has ended again (a platform's restart policy), on a
        new port, and wait until it answers."""
        self.env_overrides.update(env)
        self._spawn(name)
        self.ports[name] = wait_until(
            lambda: self._bound_port(name), timeout=60, what=f"{name} listening again"
        )
        wait_until(lambda: self._healthy(name), timeout=60, what=f"{name} /healthz again")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@contextlib.contextmanager
def running_services(
    workdir: Path, *, names: tuple[str, ...] = SERVICE_NAMES, **env: str
) -> Iterator[ServiceProcs]:
    """Real uvicorn processes for `names` (default: all five); `env` overrides their settings."""
    procs = ServiceProcs(workdir, env_overrides=env, names=names)
    try:
        procs.start()
        yield procs
    finally:
        procs.stop()
