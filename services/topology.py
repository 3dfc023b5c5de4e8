"""The checkout's topology, read from ``services/topology.toml`` (the only copy of these facts).

Pure standard library, so labctl, the tests and the kit can all import it without pulling in
FastAPI or OpenTelemetry.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

FILE = Path(__file__).with_name("topology.toml")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    calls: tuple[str, ...]
    what: str
    entry: bool = False
    memory_limit_mb: int = 0
    """The memory limit the deployments give it (compose, Kubernetes; declared natively)."""

    @property
    def url_env(self) -> str:
        """The variable a caller reads this service's base URL from (``ORDER_URL``)."""
        return f"{self.name.upper()}_URL"

    @property
    def default_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _load(path: Path = FILE) -> tuple[dict[str, Service], dict[str, int]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    services = {
        name: Service(
            name,
            int(s["port"]),
            tuple(s.get("calls", ())),
            s["what"],
            s.get("entry", False),
            int(s["memory_limit_mb"]),
        )
        for name, s in data["services"].items()
    }
    for svc in services.values():
        unknown = set(svc.calls) - set(services)
        if unknown:
            raise ValueError(f"{path.name}: {svc.name} calls unknown {sorted(unknown)}")
        later = [c for c in svc.calls if list(services).index(c) > list(services).index(svc.name)]
        if later:
            raise ValueError(f"{path.name}: {svc.name} is listed before {later}, which it calls")
    return services, {k: int(v) for k, v in data["components"].items()}


SERVICES_BY_NAME, OTHER_PORTS = _load()
SERVICES: tuple[str, ...] = tuple(SERVICES_BY_NAME)
"""Every service, in start order (the ones calling no one first)."""
CALLED: tuple[str, ...] = tuple(
    n for n in SERVICES if any(n in s.calls for s in SERVICES_BY_NAME.values())
)
"""The services some other service calls: each has a ``<NAME>_URL`` setting."""
ENTRY: str = next(s.name for s in SERVICES_BY_NAME.values() if s.entry)
DEFAULT_PORTS: dict[str, int] = {n: s.port for n, s in SERVICES_BY_NAME.items()} | OTHER_PORTS
"""Default port per lab component (services first)."""


def peers(name: str) -> tuple[str, ...]:
    """Whom ``name`` calls."""
    return SERVICES_BY_NAME[name].calls


def start_waves(names: tuple[str, ...] = SERVICES) -> list[tuple[str, ...]]:
    """``names`` in groups that can start together: each after every service it calls."""
    waves: list[tuple[str, ...]] = []
    placed: set[str] = set()
    todo = [n for n in SERVICES if n in names]
    while todo:
        wave = tuple(n for n in todo if all(c in placed or c not in names for c in peers(n)))
        waves.append(wave)
        placed.update(wave)
        todo = [n for n in todo if n not in placed]
    return waves
