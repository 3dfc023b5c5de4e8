"""Compose mode: hand over to Docker Compose where a Docker engine answers.

The stack itself is docker-compose.yml (its own issue); this only picks the compose command and
tells the user what happens.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from labctl.config import LabError


def docker_answers(timeout: float = 15.0) -> bool:
    """True when a Docker engine (not just the client) responds."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=timeout, check=False
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) if present, else ``docker-compose`` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise LabError(
        "compose mode needs `docker compose` or `docker-compose`; install one, "
        "or run `make up MODE=native`"
    )


def run(root: Path, action: str, out: Callable[[str], None] = print) -> int:
    """Run one compose action (up, down, ps, logs) in the repository root."""
    if not (root / "docker-compose.yml").exists():
        raise LabError("docker-compose.yml is missing; run `make up MODE=native` instead")
    base = compose_command()
    args = {
        "up": ["up", "-d", "--build"] + (["--wait"] if base == ["docker", "compose"] else []),
        "down": ["down"],
        "clean": ["down", "--volumes"],
        "status": ["ps"],
        "logs": ["logs", "--tail", "100"],
    }[action]
    cmd = [*base, *args]
    out(f"$ {' '.join(cmd)}")
    return subprocess.run(cmd, cwd=root, check=False).returncode
