"""The SLO spec: deploy/prometheus/slos.yaml parsed and checked (profiles, SLIs, objectives).

Why generate the rules at all: burn-rate alerting is the same dozen rules per SLO with only the
selector, the objective and the windows changing. Written by hand they drift apart; generated
from one spec, every SLO gets the same NaN guards, and the lab profile is the standard one,
time-compressed, rather than a second set of hand-tuned numbers. Format and design: docs/slo.md.
The rules are rendered by ``labctl.slo.rules``, their promtool tests by ``labctl.slo.promtool``;
``labctl slo render|check|write-tests`` runs them (``labctl.slo.commands``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labctl.config import REPO_ROOT

SPEC_PATH = REPO_ROOT / "deploy" / "prometheus" / "slos.yaml"
PROFILE_DIR = REPO_ROOT / "deploy" / "prometheus" / "slo-profiles"
TESTS_DIR = REPO_ROOT / "deploy" / "prometheus" / "tests"

KINDS = ("availability", "latency")
SEVERITIES = ("page", "ticket")
# Denominator floor: turns 0/0 at zero traffic into 0/1e-9 = 0 instead of NaN. Any real request
# rate (>= 1 request per window) is many orders of magnitude above it.
DENOMINATOR_FLOOR = "1e-9"
RUNBOOK_DIR = "docs/runbooks"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class SpecError(ValueError):
    """slos.yaml is malformed or asks for something Prometheus cannot evaluate safely."""


# --------------------------------------------------------------------------- durations


def parse_duration(text: str) -> int:
    """Seconds in a single-unit Prometheus duration ("20s", "6h", "3d")."""
    match = _DURATION.match(str(text).strip())
    if match is None:
        raise SpecError(f"duration {text!r} is not <int><s|m|h|d|w>")
    return int(match[1]) * _UNITS[match[2]]


def format_duration(seconds: int) -> str:
    """The shortest exact Prometheus spelling, so generated ranges read like hand-written ones."""
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def number(value: float) -> str:
    """Render a float without binary noise (1 - 0.999 -> 0.001)."""
    return format(round(value, 12), ".12g")


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class BurnAlert:
    """One row of Workbook table 5-8: fire when both windows burn faster than burn_rate."""

    severity: str
    long: int
    short: int
    burn_rate: float


@dataclass(frozen=True)
class Profile:
    """A mapping of nominal windows to real ranges; `lab` divides them by `compression`."""

    name: str
    description: str
    period: int
    compression: int
    min_window: int
    scrape_interval: int
    evaluation_interval: int

    def window(self, nominal: int) -> int:
        """Real range for a nominal window: compressed, then floored at min_window."""
        return max(math.ceil(nominal / self.compression), self.min_window)


@dataclass(frozen=True)
class CounterRef:
    """A counter metric and the exact label matchers that select its series."""

    metric: str
    selector: dict[str, str]


@dataclass(frozen=True)
class SLI:
    kind: str
    metric: str
    selector: dict[str, str]
    threshold: float | None = None
    also_bad: tuple[CounterRef, ...] = ()


@dataclass(frozen=True)
class SLO:
    name: str
    title: str
    service: str
    objective: float
    sli: SLI
    impact: str
    causes: tuple[str, ...]
    actions: tuple[str, ...]

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 12)

    @property
    def camel(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("-"))

    def alert_name(self, severity: str) -> str:
        return f"{self.camel}BudgetBurn{severity.capitalize()}"


@dataclass(frozen=True)
class Spec:
    burn_alerts: tuple[BurnAlert, ...]
    profiles: dict[str, Profile]
    slos: tuple[SLO, ...]

    def nominal_windows(self) -> list[int]:
        """Every window a rule needs: the alert windows plus the budget period."""
        windows = {w for b in self.burn_alerts for w in (b.long, b.short)}
        windows |= {p.period for p in self.profiles.values()}
        return sorted(windows)

    def alert_names(self) -> list[str]:
        severities = [s for s in SEVERITIES if any(b.severity == s for b in self.burn_alerts)]
        return [slo.alert_name(sev) for slo in self.slos for sev in severities]


def _selector(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"{where}: selector must be a non-empty mapping of label: value")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not _LABEL_NAME.match(str(key)) or str(key).startswith("__"):
            raise SpecError(f"{where}: bad label name {key!r}")
        if key in ("le", "status"):
            raise SpecError(f"{where}: label {key!r} is set by the SLI kind, not the selector")
        out[str(key)] = str(value)
    return out


def _metric(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _METRIC_NAME.match(raw):
        raise SpecError(f"{where}: bad metric name {raw!r}")
    return raw


def _parse_slo(raw: dict[str, Any]) -> SLO:
    name = str(raw.get("name", ""))
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise SpecError(f"SLO name {name!r} must be kebab-case")
    objective = float(raw.get("objective", 0))
    if not 0 < objective < 1:
        raise SpecError(f"{name}: objective must be in (0, 1), got {objective}")
    sli_raw = raw.get("sli") or {}
    kind = sli_raw.get("kind")
    if kind not in KINDS:
        raise SpecError(f"{name}: sli.kind must be one of {KINDS}")
    threshold = sli_raw.get("threshold")
    if (kind == "latency") != (threshold is not None):
        raise SpecError(f"{name}: a latency SLI needs a threshold, an availability SLI none")
    also_bad = tuple(
        CounterRef(
            _metric(item.get("metric"), f"{name}.also_bad"),
            _selector(item.get("selector"), f"{name}.also_bad"),
        )
        for item in sli_raw.get("also_bad") or ()
    )
    sli = SLI(
        kind=kind,
        metric=_metric(sli_raw.get("metric"), name),
        selector=_selector(sli_raw.get("selector"), name),
        threshold=None if threshold is None else float(threshold),
        also_bad=also_bad,
    )
    for key in ("title", "service", "impact"):
        if not raw.get(key):
            raise SpecError(f"{name}: {key} is required")
    causes, actions = tuple(raw.get("causes") or ()), tuple(raw.get("actions") or ())
    if not causes or not actions:
        raise SpecError(f"{name}: causes and actions are required (they feed the alert text)")
    return SLO(
        name=name,
        title=str(raw["title"]),
        service=str(raw["service"]),
        objective=objective,
        sli=sli,
        impact=" ".join(str(raw["impact"]).split()),
        causes=tuple(str(c) for c in causes),
        actions=tuple(str(a) for a in actions),
    )


def load_spec(path: Path = SPEC_PATH) -> Spec:
    """Parse and validate the spec; refuse windows Prometheus would evaluate unreliably."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or data.get("version") != 1:
        raise SpecError(f"{path}: expected a mapping with version: 1")
    burn = tuple(
        BurnAlert(
            severity=str(b["severity"]),
            long=parse_duration(b["long"]),
            short=parse_duration(b["short"]),
            burn_rate=float(b["burn_rate"]),
        )
        for b in data.get("burn_alerts") or ()
    )
    if not burn:
        raise SpecError("burn_alerts is empty")
    for b in burn:
        if b.severity not in SEVERITIES:
            raise SpecError(f"burn alert severity must be one of {SEVERITIES}")
        if b.short >= b.long or b.burn_rate <= 0:
            raise SpecError("each burn alert needs short < long and burn_rate > 0")
    profiles: dict[str, Profile] = {}
    for pname, p in (data.get("profiles") or {}).items():
        profile = Profile(
            name=str(pname),
            description=" ".join(str(p.get("description", "")).split()),
            period=parse_duration(p["period"]),
            compression=int(p["compression"]),
            min_window=parse_duration(p.get("min_window", "0s")),
            scrape_interval=parse_duration(p["scrape_interval"]),
            evaluation_interval=parse_duration(p["evaluation_interval"]),
        )
        if profile.compression < 1:
            raise SpecError(f"profile {pname}: compression must be >= 1")
        profiles[profile.name] = profile
    slos = tuple(_parse_slo(s) for s in data.get("slos") or ())
    if not slos:
        raise SpecError("slos is empty")
    if len({s.name for s in slos}) != len(slos):
        raise SpecError("SLO names must be unique")
    if "loaded_profile" in data:
        raise SpecError(
            "loaded_profile is gone: deploy/prometheus/prometheus.yml names the profile it loads"
        )
    spec = Spec(burn, profiles, slos)
    for profile in profiles.values():
        finest = 4 * max(profile.scrape_interval, profile.evaluation_interval)
        for nominal in spec.nominal_windows():
            if profile.window(nominal) < finest:
                raise SpecError(
                    f"profile {profile.name}: window {format_duration(nominal)} becomes "
                    f"{format_duration(profile.window(nominal))}, under 4x the scrape/evaluation "
                    f"interval ({format_duration(finest)}); raise min_window"
                )
    return spec
