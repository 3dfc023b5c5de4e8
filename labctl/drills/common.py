"""What every drill command shares: where runs are kept, the lab they use, run ids, output."""

from __future__ import annotations

import os
import time
from pathlib import Path

from labctl.config import REPO_ROOT, LabError
from labctl.drills.model import Drill

DRILLS_VAR = REPO_ROOT / "var" / "drills"


def say(text: str) -> None:
    print(text, flush=True)


def lab_dir() -> Path:
    raw = os.environ.get("LAB_DIR", "").strip()
    return Path(raw).resolve() if raw else REPO_ROOT / "var" / "lab"


def new_run_id(blind: bool = False) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.urandom(3).hex()}" if blind else stamp


def find_drill(drills: dict[str, Drill], drill_id: str) -> Drill:
    if drill_id not in drills:
        raise LabError(f"no drill {drill_id!r}; `list` shows them: {', '.join(drills)}")
    return drills[drill_id]
