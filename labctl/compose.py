"""Compose mode: hand over to Docker Compose where a Docker engine answers.

The stack itself is docker-compose.yml; the commands are in deploy/lab.sh, which `make` runs
directly so that compose mode needs Docker and make, not Python. This module only calls it, so
that `labctl up --mode compose` does exactly what `make up` does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path("deploy") / "lab.sh"


def docker_answers(root: Path) -> bool:
    """True when a Docker engine (not just the client) responds (deploy/lab.sh decides)."""
    env = {**os.environ, "MODE": "auto", "LAB_DIR": "/nonexistent"}  # ask about Docker only
    result = subprocess.run(
        ["bash", str(root / SCRIPT), "mode"], capture_output=True, text=True, env=env, check=False
    )
    return result.stdout.strip() == "compose"


def run(root: Path, action: str) -> int:
    """Run one compose action (up, down, status, clean, logs) in the repository root."""
    return subprocess.run(["bash", str(root / SCRIPT), "compose", action], cwd=root).returncode
