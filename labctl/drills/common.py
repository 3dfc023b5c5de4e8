"""What every drill command shares: where runs are kept, the lab they use, run ids, output."""

from __future__ import annotations

import os
import time

from labctl.config import REPO_ROOT, LabError
from labctl.drills.model import Drill

DRILLS_VAR = REPO_ROOT / "var" / "drills"


# The command to suggest, as the user would type it: the make target when run through make
# (make exports MAKELEVEL to what it runs), else the labctl command.
MAKE_TARGETS = {
    "list": "make drills", "blind": "make blind", "blind --force": "make blind FORCE=1",
    "answer": "make answer SERVICE=<service> KIND=<kind>", "hint": "make hint",
}  # fmt: skip


def command(name: str) -> str:
    """``make blind`` under make, ``labctl drill blind`` otherwise."""
    if os.environ.get("MAKELEVEL") and name in MAKE_TARGETS:
        return MAKE_TARGETS[name]
    return f"labctl drill {name}"


def say(text: str) -> None:
    print(text, flush=True)


def new_run_id(blind: bool = False) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.urandom(3).hex()}" if blind else stamp


def find_drill(drills: dict[str, Drill], drill_id: str) -> Drill:
    if drill_id not in drills:
        raise LabError(
            f"no drill {drill_id!r}; `{command('list')}` shows them: {', '.join(drills)}"
        )
    return drills[drill_id]
