"""Bringing crashed services back on the ports they had, through the native lab runner."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from labctl.config import SERVICES, Ports
from labctl.native.lab import NativeLab


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
