"""The native lab's components as data: what each is, how to start it, how to tell it is healthy.

Adding a component is one row in ``SPECS`` (and its default port in services/topology.toml):
a description, a health path, whose ports it needs first, and a function that returns its
command line and its own environment variables. ``NativeLab`` (lab.py) does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labctl.config import COMPONENTS, SERVICES
from services import topology

if TYPE_CHECKING:
    from labctl.native.lab import NativeLab

HOST = topology.HOST

Command = tuple[list[str], dict[str, str]]
Builder = Callable[["NativeLab", int, Mapping[str, int]], Command]


@dataclass(frozen=True)
class Spec:
    """What a component is, how to start it, and what must exist before it starts."""

    what: str
    health_path: str
    command: Builder
    ui_path: str = ""
    port_deps: tuple[str, ...] = ()  # their ports go into this one's config
    ready_deps: tuple[str, ...] = ()  # these must be healthy first
    ui: UiProbe | None = None  # builds differ in their web UI: ask the running one


@dataclass(frozen=True)
class UiProbe:
    """Which link to print for a component whose web UI depends on the build.

    Debian's Prometheus 2.42 has only the classic UI (``/alerts`` is a 404, ``/classic/alerts``
    works); Debian's Alertmanager has no UI at all (its page says to use amtool). The first of
    ``paths`` that answers 200 without ``missing_text`` in its body wins, else ``fallback`` with
    ``note`` (``{url}`` is the component's base URL)."""

    paths: tuple[str, ...]
    fallback: str
    note: str = ""
    missing_text: str = ""


def _service(name: str) -> Builder:
    def build(lab: NativeLab, port: int, known: Mapping[str, int]) -> Command:
        rt = lab.runtime_dir
        env = {
            "OTEL_SERVICE_NAME": name,
            "DATA_DIR": str(rt / "data"),
            "FAULT_AUDIT_FILE": str(lab.fault_audit_file),
            # A local lab on loopback, said so explicitly; its secrets are its own, random
            # (JWT_SECRET, ADMIN_TOKEN, INTERNAL_TOKEN in secrets.json: docs/security.md).
            "LAB_MODE": "local",
            **lab.secrets(),
            "DEPLOYMENT_ENVIRONMENT": lab.env.get("DEPLOYMENT_ENVIRONMENT", "lab"),
            # The limit compose and Kubernetes give it (services/topology.toml), exported as
            # process_memory_limit_bytes for ServiceMemorySaturation; nothing enforces it here.
            "MEMORY_LIMIT_MB": str(topology.SERVICES_BY_NAME[name].memory_limit_mb),
        }
        if not lab.env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            env["SPAN_FILE"] = str(rt / "traces" / f"{name}.jsonl")
        for peer in topology.peers(name):
            if known.get(peer):
                env[topology.SERVICES_BY_NAME[peer].url_env] = f"http://{HOST}:{known[peer]}"
        argv = [
            lab.python, "-m", "uvicorn", f"services.{name}.main:create_app", "--factory",
            "--host", HOST, "--port", str(port),
            # No proxy stands before a native service: uvicorn would otherwise believe an
            # X-Forwarded-For from any loopback client (its default), and the gateway would
            # hand auth a forged client address per login (past the per-client limit).
            "--no-proxy-headers",
        ]  # fmt: skip
        return argv, env

    return build


def _receiver(lab: NativeLab, port: int, known: Mapping[str, int]) -> Command:
    argv = [
        lab.python, "-m", "labctl.native.receiver", "--host", HOST, "--port", str(port),
        "--file", str(lab.alerts_file),
    ]  # fmt: skip
    return argv, {}


def _web_flags(port: int) -> list[str]:
    """Prometheus and Alertmanager share these: where to listen, how to log, their own URL."""
    flags = [f"--web.listen-address={HOST}:{port}", "--log.format=json"]
    if port:  # with port 0 the URL is not known before the bind; the default is fine then
        flags.append(f"--web.external-url=http://{HOST}:{port}")
    return flags


def _alertmanager(lab: NativeLab, port: int, known: Mapping[str, int]) -> Command:
    assert lab.binaries.alertmanager
    rt = lab.runtime_dir
    argv = [
        lab.binaries.alertmanager,
        f"--config.file={lab.alertmanager_config(known['receiver'])}",
        f"--storage.path={rt / 'alertmanager' / 'data'}",
        "--cluster.listen-address=",  # empty: no gossip port, a single local instance
    ]
    return argv + _web_flags(port), {}


def _prometheus(lab: NativeLab, port: int, known: Mapping[str, int]) -> Command:
    assert lab.binaries.prometheus
    rt = lab.runtime_dir
    argv = [
        lab.binaries.prometheus,
        f"--config.file={rt / 'prometheus' / 'prometheus.yml'}",
        f"--storage.tsdb.path={rt / 'prometheus' / 'data'}",
        "--storage.tsdb.retention.time=7d",
        "--web.enable-lifecycle",
        # The services attach trace ids to histogram observations: keep them, so a latency
        # spike leads to its traces (`query_exemplars`, Grafana's exemplar dots in compose).
        "--enable-feature=exemplar-storage",
    ]
    return argv + _web_flags(port), {}


def _locust(lab: NativeLab, port: int, known: Mapping[str, int]) -> Command:
    argv = [
        lab.python, "-m", "locust", "-f", str(lab.root / "loadtest" / "locustfile.py"),
        "--host", f"http://{HOST}:{known[topology.ENTRY]}",
        "--web-host", HOST, "--web-port", str(port),
        "--autostart", "--users", str(lab.users), "--spawn-rate", str(lab.spawn_rate),
    ]  # fmt: skip
    # The exporter's metrics are served on the web UI's /metrics: no extra port.
    return argv, {"LOCUST_METRICS_PORT": "off"}


SPECS: dict[str, Spec] = {
    # A service starts once the ports of those it calls are known (services/topology.toml).
    **{
        s.name: Spec(s.what, "/readyz", _service(s.name), "/docs", port_deps=s.calls)
        for s in topology.SERVICES_BY_NAME.values()
    },
    "receiver": Spec(
        "alert receiver: every notification, as JSON", "/healthz", _receiver, "/alerts"
    ),
    "alertmanager": Spec(
        "Alertmanager: routing, grouping, silences",
        "/-/ready",
        _alertmanager,
        "/",
        port_deps=("receiver",),
        ui=UiProbe(
            ("/",),
            "/api/v2/alerts",
            "no web UI in this build: amtool --alertmanager.url={url} alert query",
            missing_text="does not include a web application",
        ),
    ),
    "prometheus": Spec(
        "Prometheus: targets, rules, alerts",
        "/-/ready",
        _prometheus,
        "/alerts",
        ui=UiProbe(("/alerts", "/classic/alerts"), "/api/v1/alerts"),
    ),
    "locust": Spec(
        "Locust web UI: steady shopper traffic",
        "/",
        _locust,
        "/",
        port_deps=(topology.ENTRY,),
        ready_deps=SERVICES,
    ),
}
assert tuple(SPECS) == COMPONENTS, "every component in services/topology.toml needs a row here"

STOP_WAVES = (("locust",), tuple(c for c in COMPONENTS if c != "locust"))
"""Locust first (no traffic against half-stopped services), then everything else at once."""


@dataclass
class ComponentStatus:
    """One row of ``status``: what runs, where, and whether it answers."""

    name: str
    state: str  # ready | unhealthy | stopped | off
    pid: int | None = None
    port: int | None = None
    url: str | None = None
    rss_bytes: int = 0
    what: str = ""
    note: str = ""


def total_rss(rows: list[ComponentStatus]) -> int:
    return sum(row.rss_bytes for row in rows)
