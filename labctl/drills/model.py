"""Drills as data: the schema of ``loadtest/drills/*.yaml`` and the static checks against the repo.

A drill file is the whole exercise (briefing, load, fault timeline, expected and forbidden
alerts, answer key, hints, debrief), so adding a drill is writing YAML, never code. The checks
here (real services, fault kinds that apply to the service, real alert names, real load shapes)
run in the unit tests, so a typo fails CI instead of a trainee's game day.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from labctl.config import REPO_ROOT, SERVICES, loaded_rule_files
from services.fault_spec import FaultSpec, applies

DRILLS_DIR = REPO_ROOT / "loadtest" / "drills"
SHAPES_DIR = REPO_ROOT / "loadtest" / "shapes"

NO_INCIDENT = "none"
CAPACITY = "capacity"
"""The answer kind of a drill with no fault where the load outgrew the lab: answer none/capacity."""
"""The answer key (service and kind) of a drill where nothing is injected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Load(_Strict):
    """The drill's own headless Locust run: a shape from loadtest/shapes, scaled."""

    shape: str = Field(description="file name under loadtest/shapes/ without .py")
    users: int = Field(ge=1, le=200, description="peak users (LOCUST_SHAPE_USERS)")
    duration: float = Field(gt=0, le=3600, description="seconds (LOCUST_SHAPE_DURATION)")


class FaultStep(_Strict):
    """One fault on one service, from ``at`` seconds after load start, for ``for`` seconds."""

    service: str
    fault: FaultSpec = Field(description="the body the admin API takes under 'fault'")
    at: float = Field(ge=0)
    for_: float = Field(gt=0, le=3600, alias="for")

    @property
    def kind(self) -> str:
        return self.fault.kind

    def body(self) -> dict[str, Any]:
        """The fault as the admin API takes it: only what the drill file says, plus the kind."""
        return self.fault.model_dump(mode="json", exclude_unset=True)

    @property
    def end(self) -> float:
        return self.at + self.for_


class ExpectedAlert(_Strict):
    """An alert that must fire (state firing) within ``within`` seconds of the first fault."""

    alert: str
    within: float = Field(gt=0, le=3600)
    labels: dict[str, str] = Field(default_factory=dict, description="exact label matches")


class Hint(_Strict):
    text: str = Field(min_length=1)
    cost: int = Field(ge=0, le=50, description="points it costs in blind mode")


class Evidence(_Strict):
    """Where the cause shows: a dashboard panel, a trace pattern, a query."""

    kind: Literal["dashboard", "trace", "logql", "jq", "promql"]
    where: str = Field(min_length=1)
    what: str = Field(min_length=1, description="what to see there")


PILLARS = ("metrics", "traces", "logs")
NATIVE_COMMANDS = {"traces": "labctl traces", "logs": "labctl logs"}
"""The command a native step of each pillar runs; a metrics step is a PromQL expression."""


class SpanLike(_Strict):
    """A span the slowest listed trace must hold."""

    service: str
    name: str | None = Field(None, description="a regex on the span's name")
    min_ms: float = Field(0.0, ge=0)
    error: bool | None = Field(None, description="failed (true) or not (false); None: either")


class NativeExpect(_Strict):
    """What a native step finds, as a check: counts are series (metrics), traces or log lines."""

    min_count: int = Field(1, ge=0)
    max_count: int | None = Field(None, ge=0)
    top: dict[str, str] = Field(
        default_factory=dict, description="metrics: the series with the highest peak has these"
    )
    min_value: float | None = Field(None, description="metrics: that peak is at least this")
    span: SpanLike | None = Field(None, description="traces: the slowest trace holds such a span")


class NativeStep(_Strict):
    """One step a trainee can follow on the native lab, checked after every verify run."""

    pillar: Literal["metrics", "traces", "logs"]
    run: str = Field(
        min_length=1,
        description="metrics: a PromQL expression; traces/logs: a `labctl traces|logs` command "
        "without --since/--until (the report adds the run's window)",
    )
    finds: str = Field(min_length=1, description="what the trainee sees")
    expect: NativeExpect = Field(default_factory=NativeExpect)

    @model_validator(mode="after")
    def _fits_its_pillar(self) -> NativeStep:
        command = NATIVE_COMMANDS.get(self.pillar)
        if command and not self.run.startswith(command + " ") and self.run != command:
            raise ValueError(f"a {self.pillar} step runs `{command} ...`, not {self.run!r}")
        if self.pillar == "metrics" and self.run.startswith("labctl"):
            raise ValueError("a metrics step is a PromQL expression")
        if ("--since" in self.run or "--until" in self.run) and command:
            raise ValueError("the window is the run's: leave --since/--until out")
        if self.pillar != "metrics" and (self.expect.top or self.expect.min_value is not None):
            raise ValueError("top and min_value check metrics steps only")
        if self.pillar != "traces" and self.expect.span is not None:
            raise ValueError("span checks traces steps only")
        return self


class Debrief(_Strict):
    summary: str = Field(min_length=1)
    evidence: list[Evidence] = Field(min_length=1)
    native: list[NativeStep] = Field(
        min_length=len(PILLARS), description="at least one step per pillar on the native lab"
    )

    @model_validator(mode="after")
    def _every_pillar(self) -> Debrief:
        missing = [p for p in PILLARS if all(s.pillar != p for s in self.native)]
        if missing:
            raise ValueError(f"no native step for {', '.join(missing)}")
        return self


class AnswerKey(_Strict):
    service: str
    kind: str


class Drill(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    title: str = Field(min_length=1)
    difficulty: Literal["easy", "medium", "hard"]
    briefing: str = Field(min_length=1, description="symptoms only, never the cause")
    load: Load
    timeline: list[FaultStep] = Field(default_factory=list)
    expected_alerts: list[ExpectedAlert] = Field(default_factory=list)
    allowed_alerts: list[str] = Field(
        default_factory=list, description="may fire (consequences of the fault), not required"
    )
    silent_alerts: list[str] | Literal["others"] = Field(
        "others", description="'others': every alert neither expected nor allowed"
    )
    answer: AnswerKey
    cascade: bool = Field(
        False,
        description="the first alert to fire names a victim, a service other than the "
        "answer's (verify fails the run otherwise)",
    )
    hints: list[Hint] = Field(min_length=1)
    debrief: Debrief

    @model_validator(mode="after")
    def _consistent(self) -> Drill:
        for step in self.timeline:
            if step.end > self.load.duration:
                raise ValueError(
                    f"fault on {step.service} ends at {step.end:.0f}s, after the load "
                    f"({self.load.duration:.0f}s): its effect would not be observed under load"
                )
        if not self.timeline:
            answer = (self.answer.service, self.answer.kind)
            if answer not in ((NO_INCIDENT, NO_INCIDENT), (NO_INCIDENT, CAPACITY)):
                raise ValueError("a drill without faults has the answer none/none or none/capacity")
            if self.expected_alerts and self.answer.kind != CAPACITY:
                raise ValueError("a drill without faults expects no alert (but a capacity one)")
        elif self.answer.service == NO_INCIDENT:
            raise ValueError("a drill with faults cannot have the answer 'none'")
        if isinstance(self.silent_alerts, list):
            overlap = set(self.silent_alerts) & (
                {e.alert for e in self.expected_alerts} | set(self.allowed_alerts)
            )
            if overlap:
                raise ValueError(f"alerts both expected/allowed and silent: {sorted(overlap)}")
        return self

    @property
    def fault_start(self) -> float | None:
        return min((s.at for s in self.timeline), default=None)

    @property
    def fault_end(self) -> float | None:
        return max((s.end for s in self.timeline), default=None)

    def is_silent(self, alertname: str) -> bool:
        """Must this alert stay silent during the drill?"""
        if alertname in self.allowed_alerts or any(
            e.alert == alertname for e in self.expected_alerts
        ):
            return False
        return self.silent_alerts == "others" or alertname in self.silent_alerts


def load_drill(path: Path) -> Drill:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    drill = TypeAdapter(Drill).validate_python(data)
    if drill.id != path.stem:
        raise ValueError(f"{path.name}: id {drill.id!r} differs from the file name")
    return drill


def load_drills(directory: Path = DRILLS_DIR) -> dict[str, Drill]:
    """Every drill, by id, in file name order."""
    return {d.id: d for d in (load_drill(p) for p in sorted(directory.glob("*.yaml")))}


def rule_alerts(files: list[Path] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Alert rules Prometheus loads, by name (one name may have several rules, one per service)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in loaded_rule_files() if files is None else files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    found.setdefault(rule["alert"], []).append(rule)
    return found


def shapes(shapes_dir: Path = SHAPES_DIR) -> set[str]:
    return {p.stem for p in shapes_dir.glob("*.py") if p.stem not in ("__init__", "base")}


def problems(
    drill: Drill,
    alerts: dict[str, list[dict[str, Any]]],
    known_shapes: set[str],
) -> list[str]:
    """What in this drill does not exist in the repo (empty when the drill is sound).

    Fault kinds and their parameters are checked by the schema already (services.fault_spec)."""
    out = []
    if drill.load.shape not in known_shapes:
        out.append(f"unknown load shape {drill.load.shape!r}")
    for step in drill.timeline:
        if step.service not in SERVICES:
            out.append(f"unknown service {step.service!r}")
        elif not applies(step.kind, step.service):
            out.append(f"fault kind {step.kind!r} does not apply to {step.service!r}")
        ttl = step.body().get("ttl_seconds")
        if ttl is not None and ttl < step.for_:
            out.append(f"ttl_seconds {ttl} is shorter than the step ({step.for_:.0f}s)")
    names = (
        [e.alert for e in drill.expected_alerts]
        + drill.allowed_alerts
        + (drill.silent_alerts if isinstance(drill.silent_alerts, list) else [])
    )
    out += [f"unknown alert {n!r}" for n in names if n not in alerts]
    for expected in drill.expected_alerts:
        for rule in alerts.get(expected.alert, []):
            # A label the rule sets to a constant must agree with what the drill expects.
            fixed = {k: v for k, v in (rule.get("labels") or {}).items() if "{{" not in str(v)}
            clash = {k for k, v in expected.labels.items() if k in fixed and fixed[k] != v}
            if clash and len(alerts[expected.alert]) == 1:
                out.append(f"{expected.alert}: the rule fixes {sorted(clash)} to other values")
    if drill.timeline:
        service, kind = drill.answer.service, drill.answer.kind
        if (service, kind) not in {(s.service, s.kind) for s in drill.timeline}:
            out.append(f"answer {service}/{kind} is not a step of the timeline")
    return out
