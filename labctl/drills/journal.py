"""A drill run's journal: everything that happened, typed, written as ``journal.json``.

The runner fills it, the report and ``verify``'s table read it, blind mode reads it back from
disk to score an answer. One model for all of them, so a field renamed in one place fails
everywhere at once instead of reading ``None`` by string key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from labctl.drills.scoring import Score


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FaultWindow(_Record):
    service: str
    fault: dict[str, Any] = Field(description="the body sent to the admin API")
    at: float
    until: float


class AlertSeen(_Record):
    """One alert (name + labels) and when it fired, from Prometheus' /api/v1/alerts."""

    alert: str
    labels: dict[str, str]
    active_at: float
    fired_at: float | None
    intervals: list[list[float | None]]
    carried: bool = Field(description="already active before the drill started")


class Notification(_Record):
    """What the alert receiver got from Alertmanager."""

    received_at: float | None = None
    channel: str | None = None
    status: str | None = None
    alertnames: list[str] | None = None


class DataCheck(BaseModel):
    """The invariants of labctl.drills.data_check: ``ok`` None when skipped; counts as extras."""

    model_config = ConfigDict(extra="allow")
    ok: bool | None
    problems: list[str] = Field(default_factory=list)
    skipped: str | None = None

    def details(self) -> dict[str, Any]:
        """Everything besides ok and problems (counts by status, why it was skipped)."""
        return {
            k: v for k, v in self.model_dump(exclude={"ok", "problems"}).items() if v is not None
        }


class ExpectedResult(_Record):
    """One expected alert of the drill: did it fire, how long after the fault."""

    alert: str
    labels: dict[str, str]
    within: float
    detected_after: float | None
    ok: bool


class StepResult(_Record):
    """One native step of the debrief after the run: did it find what the debrief says?"""

    pillar: str
    command: str = Field(description="what the trainee types, with the run's window")
    ok: bool
    found: str


class Answer(_Record):
    guesses: list[dict[str, Any]]
    hints: list[dict[str, Any]]


class Journal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    drill: str | None = Field(description="None while a blind drill is unanswered")
    lab: dict[str, Any]
    started_at: float
    ended_at: float
    load_ended_at: float
    quiet_before: bool | None = None
    interrupted: bool = False
    error: str | None = None
    faults: list[FaultWindow] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
    alerts: list[AlertSeen] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)
    data_check: DataCheck
    prometheus_errors: int = 0
    verdict: str
    failures: list[str] = Field(default_factory=list)
    expected: list[ExpectedResult] = Field(default_factory=list)
    native: list[StepResult] = Field(
        default_factory=list, description="the debrief's native steps, checked (not in blind runs)"
    )
    time_to_detect: float | None = None
    answer: Answer | None = None
    score: Score | None = None

    def first_page(self) -> float | None:
        """When the first page of the drill's own doing fired (unix time), if one did."""
        pages = [
            a.fired_at
            for a in self.alerts
            if not a.carried and a.labels.get("severity") == "page" and a.fired_at
        ]
        return min(pages) if pages else None

    def write(self, run_dir: Path) -> Path:
        path = run_dir / "journal.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, run_dir: Path) -> Journal | None:
        path = run_dir / "journal.json"
        if not path.exists():
            return None
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
