"""The drill's own headless Locust run, with the drill's load shape, in its own process group."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import psutil

from labctl.config import REPO_ROOT
from labctl.drills.model import Drill
from labctl.native import procs


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
        self.checkouts = run_dir / "checkouts.jsonl"  # what the shop accepted, as shoppers saw it
        self.env = {
            **os.environ,
            "LOCUST_SHAPE_DURATION": str(drill.load.duration),
            "LOCUST_SHAPE_USERS": str(drill.load.users),
            "LOCUST_METRICS_PORT": "off",
            "LOCUST_CHECKOUTS_FILE": str(self.checkouts),
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
