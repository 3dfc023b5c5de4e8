"""Lab settings read from the environment: ports, binaries, the default load.

Kept free of process handling so the CLI can validate everything (and fail with one clear
sentence) before a single process is started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.topology import DEFAULT_PORTS, SERVICES

REPO_ROOT = Path(__file__).resolve().parents[1]

COMPONENTS = tuple(DEFAULT_PORTS)
"""The services in start order (services/topology.toml), then the lab's own components."""

__all__ = ["SERVICES"]

HTTP_TIMEOUT = 5.0
"""Seconds for one call to a lab API (Prometheus, a service's admin API, the receiver)."""

RECEIVER_DEFAULT_PORT = DEFAULT_PORTS["receiver"]


PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"


def lab_dir() -> Path:
    """The runtime folder of the lab ``make up`` runs: ``LAB_DIR``, default ``var/lab``."""
    raw = os.environ.get("LAB_DIR", "").strip()
    return Path(raw).resolve() if raw else REPO_ROOT / "var" / "lab"


def loaded_rule_files(config: Path = PROMETHEUS_DIR / "prometheus.yml") -> list[Path]:
    """The rule files Prometheus loads: its ``rule_files`` globs, resolved as Prometheus does
    (against the folder of the config file), so every reader agrees with Prometheus itself."""
    doc = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    found: list[Path] = []
    for pattern in doc.get("rule_files") or ():
        found += sorted(
            p.resolve() for p in config.parent.glob(pattern) if p.resolve() not in found
        )
    return found


class LabError(Exception):
    """A problem the user can fix; the CLI prints the message (no traceback) and exits 1."""


class PortInUseError(LabError):
    """A port the lab needs is taken; separate so a caller on random ports can retry."""

    def __init__(self, component: str, port: int, detail: str = "") -> None:
        self.component = component
        self.port = port
        env = port_env_name(component)
        msg = f"port {port} for {component} is already in use{detail}; free it or set {env}"
        super().__init__(msg)


def port_env_name(component: str) -> str:
    return f"{component.upper()}_PORT"


def parse_port(name: str, raw: str, allow_zero: bool = True) -> int:
    """Parse one port variable; 0 means 'any free port' (the OS picks, the runner reads it back)."""
    text = raw.strip()
    try:
        port = int(text, 10)
    except ValueError:
        raise LabError(
            f"{name}={raw!r} is not a port number (1-65535, or 0 for any free port)"
        ) from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise LabError(f"{name}={port} is out of range (1-65535, or 0 for any free port)")
    return port


@dataclass(frozen=True)
class Ports:
    """Port per component; 0 lets the OS choose (tests use this to avoid port races)."""

    values: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))

    def __post_init__(self) -> None:
        missing = set(COMPONENTS) - set(self.values)
        if missing:
            raise LabError(f"no port given for {', '.join(sorted(missing))}")
        seen: dict[int, str] = {}
        for name in COMPONENTS:
            port = self.values[name]
            if port and port in seen:
                raise LabError(
                    f"{port_env_name(seen[port])} and {port_env_name(name)} are both {port}; "
                    "every component needs its own port"
                )
            seen[port] = name

    def __getitem__(self, component: str) -> int:
        return self.values[component]

    def __iter__(self) -> Iterator[str]:
        return iter(COMPONENTS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ports:
        env = os.environ if env is None else env
        values = {}
        for name, default in DEFAULT_PORTS.items():
            key = port_env_name(name)
            raw = env.get(key, "")
            values[name] = parse_port(key, raw) if raw.strip() else default
        return cls(values)

    @classmethod
    def any_free(cls) -> Ports:
        """Every port chosen by the OS at bind time: no 'pick, close, reuse' race."""
        return cls(dict.fromkeys(COMPONENTS, 0))

    def replace(self, **changes: int) -> Ports:
        return Ports({**self.values, **changes})


@dataclass(frozen=True)
class Binaries:
    """Where Prometheus and Alertmanager live; None when not installed."""

    prometheus: str | None
    alertmanager: str | None
    explicit: frozenset[str] = frozenset()
