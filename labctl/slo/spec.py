"""SLO rule generator: deploy/prometheus/slos.yaml -> Prometheus recording rules and alerts.

Why generate: burn-rate alerting is the same dozen rules per SLO with only the selector, the
objective and the windows changing. Written by hand they drift apart; generated from one spec,
every SLO gets the same NaN guards, and the lab profile is the standard one, time-compressed,
rather than a second set of hand-tuned numbers. Format and design: docs/slo.md.

    uv run python -m labctl.slo                # regenerate the committed rule files
    uv run python -m labctl.slo --check        # exit 1 if they differ from the spec
    uv run python -m labctl.slo --write-tests  # re-measure time-to-page with promtool and
                                               # rewrite deploy/prometheus/tests/slo-*.test.yml
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO_ROOT / "deploy" / "prometheus" / "slos.yaml"
PROFILE_DIR = REPO_ROOT / "deploy" / "prometheus" / "slo-profiles"
LOADED_RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "slo.yml"
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


def _number(value: float) -> str:
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
    loaded_profile: str
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
    spec = Spec(str(data.get("loaded_profile")), burn, profiles, slos)
    if spec.loaded_profile not in profiles:
        raise SpecError(f"loaded_profile {spec.loaded_profile!r} is not a profile")
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


# --------------------------------------------------------------------------- PromQL


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _matchers(selector: dict[str, str], *extra: str) -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in selector.items()]
    return "{" + ",".join([*parts, *extra]) + "}"


def le_matcher(threshold: float) -> str:
    """Match the threshold bucket however the client spells it.

    prometheus_client (our services) writes le="60.0" and le="0.5"; Go clients and Prometheus 3
    normalisation write le="60". A regex over both spellings keeps the SLI correct either way.
    """
    go = format(threshold, "g") if threshold != int(threshold) else str(int(threshold))
    python = repr(float(threshold))
    spellings = sorted({go, python}, key=len)
    if len(spellings) == 1:
        return f'le="{spellings[0]}"'
    return 'le=~"' + "|".join(re.escape(s).replace("\\", "\\\\") for s in spellings) + '"'


def _sum_rate(series: str, window: str) -> str:
    # `or vector(0)`: an absent series (never initialised, target not scraped yet) counts as 0
    # rather than making the whole ratio vanish. sum() drops every label, so vector(0) matches.
    return f"(sum(rate({series}[{window}])) or vector(0))"


def error_ratio_expr(sli: SLI, window: str) -> str:
    """bad / total over `window`, exactly 0 (never NaN, never absent) at zero traffic."""
    extra = [_sum_rate(c.metric + _matchers(c.selector), window) for c in sli.also_bad]
    if sli.kind == "availability":
        total = _sum_rate(sli.metric + _matchers(sli.selector), window)
        bad = _sum_rate(sli.metric + _matchers(sli.selector, 'status=~"5.."'), window)
    else:
        assert sli.threshold is not None
        total = _sum_rate(f"{sli.metric}_count" + _matchers(sli.selector), window)
        good = _sum_rate(
            f"{sli.metric}_bucket" + _matchers(sli.selector, le_matcher(sli.threshold)), window
        )
        # clamp_min: bucket and _count are scraped together, but never let rounding go negative.
        bad = f"clamp_min(\n    {total}\n    - {good},\n    0\n  )"
    bad_terms = "\n  + ".join([bad, *extra])
    total_terms = "\n  + ".join([total, *extra])
    return f"(\n  {bad_terms}\n)\n/\nclamp_min(\n  {total_terms},\n  {DENOMINATOR_FLOOR}\n)"


# --------------------------------------------------------------------------- rules


def _ratio_record(nominal: int) -> str:
    return f"slo:sli_error:ratio_rate{format_duration(nominal)}"


def _burn_record(nominal: int) -> str:
    return f"slo:burn_rate:{format_duration(nominal)}"


def _windows_text(spec: Spec, profile: Profile, severity: str) -> str:
    parts = []
    for b in spec.burn_alerts:
        if b.severity != severity:
            continue
        parts.append(
            f"> {_number(b.burn_rate)}x over {format_duration(profile.window(b.long))} and "
            f"{format_duration(profile.window(b.short))} (Workbook {format_duration(b.long)}/"
            f"{format_duration(b.short)})"
        )
    return "; or ".join(parts)


def _alert_rule(spec: Spec, profile: Profile, slo: SLO, severity: str) -> dict[str, Any]:
    tiers = []
    for b in spec.burn_alerts:
        if b.severity != severity:
            continue
        rate = _number(b.burn_rate)
        sel = f'{{slo="{slo.name}"}}'
        tiers.append(
            f"(\n  {_burn_record(b.long)}{sel} > {rate}\n"
            f"  and\n  {_burn_record(b.short)}{sel} > {rate}\n)"
        )
    name = slo.alert_name(severity)
    period = f"{format_duration(profile.period)}, profile {profile.name}"
    if profile.window(profile.period) != profile.period:
        period += f" compresses it to {format_duration(profile.window(profile.period))}"
    causes = "\n".join(f"- {c}" for c in slo.causes)
    actions = "\n".join(f"{i}. {a}" for i, a in enumerate(slo.actions, 1))
    urgency = (
        "fast enough to exhaust the budget within days: act now"
        if severity == "page"
        else "steadily: the budget runs out before the period ends unless someone fixes it"
    )
    description = (
        f"Impact: {slo.impact}\n"
        f"The {slo.title.lower()} SLO ({_number(slo.objective * 100)}% over {period}) "
        f"is burning its error budget {urgency}.\n"
        f"Condition: burn rate {_windows_text(spec, profile, severity)}.\n"
        f"Likely causes:\n{causes}\n"
        f"First actions:\n{actions}\n"
    )
    return {
        "alert": name,
        "expr": "\nor\n".join(tiers),
        "labels": {"severity": severity, "service": slo.service, "slo": slo.name},
        "annotations": {
            "summary": (
                f"{slo.title} SLO ({_number(slo.objective * 100)}%) is burning its error budget "
                '{{ $value | printf "%.1f" }}x faster than sustainable'
            ),
            "description": description,
            "runbook_url": f"{RUNBOOK_DIR}/{name}.md",
        },
    }


def build_rules(spec: Spec, profile: Profile) -> dict[str, Any]:
    """One rule group per SLO: recordings first, then the alerts reading them.

    Keeping an SLO's alerts in the group of its recordings means they are evaluated in order in
    the same cycle, so an alert never reads a burn rate one evaluation interval old.
    """
    groups = []
    for slo in spec.slos:
        labels = {"slo": slo.name, "service": slo.service}
        sel = f'{{slo="{slo.name}"}}'
        rules: list[dict[str, Any]] = [
            {
                "record": "slo:objective:ratio",
                "expr": f"vector({_number(slo.objective)})",
                "labels": labels,
            },
        ]
        for nominal in spec.nominal_windows():
            window = format_duration(profile.window(nominal))
            rules.append(
                {
                    "record": _ratio_record(nominal),
                    "expr": error_ratio_expr(slo.sli, window),
                    "labels": labels,
                }
            )
        burn_windows = sorted({w for b in spec.burn_alerts for w in (b.long, b.short)})
        for nominal in burn_windows:
            rules.append(
                {
                    "record": _burn_record(nominal),
                    "expr": f"{_ratio_record(nominal)}{sel} / {_number(slo.budget)}",
                    "labels": labels,
                }
            )
        rules.append(
            {
                "record": "slo:error_budget:remaining_ratio",
                "expr": f"1 - {_ratio_record(profile.period)}{sel} / {_number(slo.budget)}",
                "labels": labels,
            }
        )
        for severity in SEVERITIES:
            if any(b.severity == severity for b in spec.burn_alerts):
                rules.append(_alert_rule(spec, profile, slo, severity))
        groups.append({"name": f"slo-{slo.name}", "rules": rules})
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so PromQL in the rule files stays readable."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors: a rule file is read by people


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=False)


def render_profile(spec: Spec, profile: Profile) -> str:
    windows = ", ".join(
        f"{format_duration(n)}->{format_duration(profile.window(n))}"
        for n in spec.nominal_windows()
    )
    header = (
        "# GENERATED by `uv run python -m labctl.slo` from deploy/prometheus/slos.yaml.\n"
        "# Do not edit: change the spec and regenerate (docs/slo.md).\n"
        f"# Profile: {profile.name} (compression {profile.compression}x, windows {windows}).\n"
    )
    return header + dump_yaml(build_rules(spec, profile))


def render_all(spec: Spec) -> dict[Path, str]:
    """Every generated rule file, keyed by path: both profiles plus the loaded copy."""
    out = {
        PROFILE_DIR / f"slo-{name}.yml": render_profile(spec, profile)
        for name, profile in spec.profiles.items()
    }
    out[LOADED_RULES] = out[PROFILE_DIR / f"slo-{spec.loaded_profile}.yml"]
    return out


def drifted(spec: Spec) -> list[Path]:
    """Generated files whose committed content differs from what the spec produces now."""
    return [
        path
        for path, text in render_all(spec).items()
        if not path.exists() or path.read_text() != text
    ]


# --------------------------------------------------------------------------- promtool tests
#
# The burn-rate tests are generated too, because their inputs follow from the spec (selectors,
# objectives, windows). Their expected times are *measured* with promtool (binary search over
# evaluation steps), written into the test files, and cross-checked in tests/test_slo_generator.py
# against the Workbook's closed form. promtool then guards them like any other rule test.

TRAFFIC_PER_STEP = 1000  # requests per scrape interval in synthetic traffic
TTP_SLO = "checkout-availability"
TTP_FAULTS = (1.0, 0.1, 0.02)


@dataclass
class Scenario:
    """Synthetic traffic for one SLO: healthy for `pre` steps, then `bad` of `n` per step fail."""

    slo: SLO
    pre: int
    fault: int
    n: int
    bad: int
    via_also_bad: bool = False
    series: list[dict[str, str]] = field(default_factory=list)

    def build(self) -> list[dict[str, str]]:
        pre, fault, n, bad = self.pre, self.fault, self.n, self.bad
        steps = pre + fault

        def counter(per_step_pre: int, per_step_fault: int) -> str:
            head = f"0+{per_step_pre}x{pre}"
            if fault == 0:
                return head
            start = per_step_pre * pre + per_step_fault
            return f"{head} {start}+{per_step_fault}x{fault - 1}"

        sli = self.slo.sli
        out: list[dict[str, str]] = []
        if sli.kind == "availability":
            ok_status = "200"
            out.append(
                {
                    "series": sli.metric + _matchers(sli.selector, f'status="{ok_status}"'),
                    "values": counter(n, n - bad),
                }
            )
            out.append(
                {
                    "series": sli.metric + _matchers(sli.selector, 'status="500"'),
                    "values": counter(0, bad),
                }
            )
        else:
            assert sli.threshold is not None
            le = repr(float(sli.threshold))  # what prometheus_client exposes
            delivered_bad = 0 if self.via_also_bad else bad
            delivered = n - (bad if self.via_also_bad else 0)
            out.append(
                {
                    "series": f"{sli.metric}_count" + _matchers(sli.selector),
                    "values": counter(n, delivered),
                }
            )
            out.append(
                {
                    "series": f"{sli.metric}_bucket" + _matchers(sli.selector, f'le="{le}"'),
                    "values": counter(n, delivered - delivered_bad),
                }
            )
            out.append(
                {
                    "series": f"{sli.metric}_bucket" + _matchers(sli.selector, 'le="+Inf"'),
                    "values": counter(n, delivered),
                }
            )
        for i, ref in enumerate(sli.also_bad):
            per_fault = bad if (self.via_also_bad and i == 0) else 0
            out.append(
                {"series": ref.metric + _matchers(ref.selector), "values": counter(0, per_fault)}
            )
        assert steps >= 0
        return out


def _alert_labels(slo: SLO, severity: str) -> dict[str, str]:
    return {"severity": severity, "service": slo.service, "slo": slo.name}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise SystemExit("promtool not found: apt-get install prometheus prometheus-alertmanager")
    return path


def _run_promtool(test_doc: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    test_path = workdir / "probe.test.yml"
    test_path.write_text(dump_yaml(test_doc))
    return subprocess.run(
        [_promtool(), "test", "rules", str(test_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _test_doc(rule_file: Path, profile: Profile, groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": format_duration(profile.evaluation_interval),
        "tests": groups,
    }


def _group(name: str, profile: Profile, series: list[dict[str, str]], **tests: Any) -> dict:
    return {
        "name": name,
        "interval": format_duration(profile.scrape_interval),
        "input_series": series,
        **tests,
    }


def _fires(
    rule_file: Path,
    profile: Profile,
    series: list[dict[str, str]],
    alert: str,
    at: int,
    workdir: Path,
) -> bool:
    probe = {
        "expr": f'count(ALERTS{{alertname="{alert}",alertstate="firing"}})',
        "eval_time": format_duration(at),
        "exp_samples": [{"labels": "{}", "value": 1}],
    }
    doc = _test_doc(
        rule_file, profile, [_group("probe", profile, series, promql_expr_test=[probe])]
    )
    return _run_promtool(doc, workdir).returncode == 0


def first_firing(
    rule_file: Path, profile: Profile, scenario: Scenario, alert: str, horizon: int, workdir: Path
) -> int | None:
    """Seconds after fault start at which `alert` first fires, on the evaluation grid."""
    step = profile.evaluation_interval
    start = scenario.pre * profile.scrape_interval
    series = scenario.build()
    lo, hi = 0, horizon // step
    if not _fires(rule_file, profile, series, alert, start + hi * step, workdir):
        return None
    while lo < hi:  # invariant: fires at hi; a fault only ever grows the burn rate
        mid = (lo + hi) // 2
        if _fires(rule_file, profile, series, alert, start + mid * step, workdir):
            hi = mid
        else:
            lo = mid + 1
    return lo * step


_ANNOTATIONS = re.compile(r"got:\[.*?Annotations:\{(.*?)\}\n", re.S)
_PAIR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def rendered_annotations(
    rule_file: Path,
    profile: Profile,
    series: list[dict[str, str]],
    alert: str,
    labels: dict[str, str],
    at: int,
    workdir: Path,
) -> dict[str, str]:
    """Annotations as Prometheus renders them at `at` (read back from promtool's diff)."""
    case = {
        "eval_time": format_duration(at),
        "alertname": alert,
        "exp_alerts": [{"exp_labels": labels}],
    }
    doc = _test_doc(rule_file, profile, [_group("render", profile, series, alert_rule_test=[case])])
    result = _run_promtool(doc, workdir)
    match = _ANNOTATIONS.search(result.stdout + result.stderr)
    if match is None:
        raise RuntimeError(f"cannot read annotations of {alert}:\n{result.stdout}")
    return {k: ast.literal_eval(f'"{v}"') for k, v in _PAIR.findall(match[1])}


@dataclass(frozen=True)
class Measured:
    profile: str
    slo: str
    severity: str
    fault: str
    seconds: int


def _steps(profile: Profile, seconds: int) -> int:
    return math.ceil(seconds / profile.scrape_interval)


def _pre_steps(spec: Spec, profile: Profile, severity: str) -> int:
    """Healthy history long enough to fill the longest window the alert reads."""
    longest = max(b.long for b in spec.burn_alerts if b.severity == severity)
    return _steps(profile, profile.window(longest))


def _ticket_ratio(spec: Spec, slo: SLO) -> float:
    """A slow burn: twice the ticket threshold, still below every page threshold."""
    page = min(b.burn_rate for b in spec.burn_alerts if b.severity == "page")
    ticket = max(b.burn_rate for b in spec.burn_alerts if b.severity == "ticket")
    return round(slo.budget * min(2 * ticket, (ticket + page) / 2), 12)


def _coarse(spec: Spec, profile: Profile) -> Profile | None:
    """A cheaper grid for the ticket tests when the 3d window makes a fine grid too slow.

    At a 1m scrape/evaluation grid a 3-day window costs ~45 s per promtool run; the ticket's
    own short window (6h) is still sampled 72 times at 5m, which is plenty. The page windows
    are too short for that grid, so the coarse file asserts ticket alerts only.
    """
    short = min(profile.window(b.short) for b in spec.burn_alerts if b.severity == "ticket")
    if short // profile.scrape_interval <= 200:
        return None
    scrape = short // 72
    return replace(profile, scrape_interval=scrape, evaluation_interval=3 * scrape)


@dataclass
class _TestFile:
    """A promtool test file being assembled for one profile (and one grid)."""

    spec: Spec
    profile: Profile
    workdir: Path
    groups: list[dict[str, Any]] = field(default_factory=list)
    measured: list[Measured] = field(default_factory=list)

    @property
    def rule_file(self) -> Path:
        return PROFILE_DIR / f"slo-{self.profile.name}.yml"

    def fault_case(
        self, slo: SLO, severity: str, ratio: float, label: str, via_also_bad: bool = False
    ) -> None:
        """Measure when `severity` fires for a constant fault, then assert just before/at it."""
        profile, step = self.profile, self.profile.evaluation_interval
        alert = slo.alert_name(severity)
        pre = _pre_steps(self.spec, profile, severity)
        tiers = [b for b in self.spec.burn_alerts if b.severity == severity]
        # Workbook closed form, doubled plus slack: the search only needs an upper bound.
        bound = max(
            min(profile.window(b.long) * b.burn_rate * slo.budget / ratio for b in tiers),
            min(profile.window(b.short) for b in tiers),
        )
        horizon = int(2 * bound) + 4 * profile.scrape_interval + 2 * step
        fault = _steps(profile, horizon) + 1
        scenario = Scenario(
            slo, pre, fault, TRAFFIC_PER_STEP, round(TRAFFIC_PER_STEP * ratio), via_also_bad
        )
        ttp = first_firing(self.rule_file, profile, scenario, alert, horizon, self.workdir)
        if ttp is None:
            raise RuntimeError(f"{alert} never fired for {label} in profile {profile.name}")
        start = pre * profile.scrape_interval
        series = scenario.build()
        labels = _alert_labels(slo, severity)
        annotations = rendered_annotations(
            self.rule_file, profile, series, alert, labels, start + ttp, self.workdir
        )
        cases = []
        if ttp > 0:
            cases.append(
                {
                    "eval_time": format_duration(start + ttp - step),
                    "alertname": alert,
                    "exp_alerts": [],
                }
            )
        cases.append(
            {
                "eval_time": format_duration(start + ttp),
                "alertname": alert,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
            }
        )
        self.groups.append(
            _group(
                f"{alert}: {label} from t={format_duration(start)} fires after "
                f"{format_duration(ttp) if ttp else '0s'}",
                profile,
                series,
                alert_rule_test=cases,
            )
        )
        self.measured.append(Measured(profile.name, slo.name, severity, label, ttp))

    def silence_cases(self) -> None:
        """Silent on healthy traffic, at zero traffic (NaN guard) and with no series at all."""
        spec, profile = self.spec, self.profile
        n = TRAFFIC_PER_STEP
        # Twice the longest alert window, capped at 12h so the standard file stays quick.
        quiet = min(2 * profile.window(max(b.long for b in spec.burn_alerts)), 12 * 3600)
        quiet_steps = _steps(profile, quiet)
        end = quiet_steps * profile.scrape_interval
        checks = [format_duration(t) for t in sorted({end // 2, end})]
        for label, per_step in (("healthy traffic", n), ("zero traffic", 0)):
            series = [
                s for slo in spec.slos for s in Scenario(slo, quiet_steps, 0, per_step, 0).build()
            ]
            cases = [
                {"eval_time": t, "alertname": a, "exp_alerts": []}
                for t in checks
                for a in spec.alert_names()
            ]
            exprs = [
                {
                    "expr": _ratio_record(w),
                    "eval_time": checks[-1],
                    "exp_samples": [
                        {"labels": _labels_text(_ratio_record(w), slo), "value": 0}
                        for slo in spec.slos
                    ],
                }
                for w in spec.nominal_windows()
            ]
            self.groups.append(
                _group(
                    f"silent on {label}",
                    profile,
                    series,
                    alert_rule_test=cases,
                    promql_expr_test=exprs,
                )
            )
        self.groups.append(
            _group(
                "silent, and a full budget (not NaN, not absent) when no SLI series exist",
                profile,
                [{"series": 'up{job="gateway"}', "values": f"1x{quiet_steps}"}],
                alert_rule_test=[
                    {"eval_time": checks[-1], "alertname": a, "exp_alerts": []}
                    for a in spec.alert_names()
                ],
                promql_expr_test=[
                    {
                        "expr": "slo:error_budget:remaining_ratio",
                        "eval_time": checks[-1],
                        "exp_samples": [
                            {
                                "labels": _labels_text("slo:error_budget:remaining_ratio", slo),
                                "value": 1,
                            }
                            for slo in spec.slos
                        ],
                    }
                ],
            )
        )

    def render(self, purpose: str) -> str:
        doc = {
            "rule_files": [str(Path("..") / "slo-profiles" / self.rule_file.name)],
            "evaluation_interval": format_duration(self.profile.evaluation_interval),
            "tests": self.groups,
        }
        header = (
            "# GENERATED by `uv run python -m labctl.slo --write-tests`: "
            f"{purpose} for the {self.profile.name} SLO profile.\n"
            "# Expected firing times were measured with promtool and are cross-checked against\n"
            "# the Workbook closed form in tests/test_slo_generator.py. Table: docs/slo.md.\n"
        )
        return header + dump_yaml(doc)


def generate_tests(spec: Spec, profile: Profile, workdir: Path) -> list[tuple[str, str, list]]:
    """promtool test files for a profile: (file name, text, measured times) each."""
    main = _TestFile(spec, profile, workdir)
    coarse_profile = _coarse(spec, profile)
    tickets = main if coarse_profile is None else _TestFile(spec, coarse_profile, workdir)
    ttp_slo = next(s for s in spec.slos if s.name == TTP_SLO)
    for ratio in TTP_FAULTS:
        main.fault_case(ttp_slo, "page", ratio, f"{_number(ratio * 100)}% errors")
    for slo in spec.slos:
        if slo is not ttp_slo:
            main.fault_case(slo, "page", 1.0, "100% bad events")
        if slo.sli.also_bad:
            main.fault_case(slo, "page", 1.0, "100% dead-lettered (also_bad)", via_also_bad=True)
        ratio = _ticket_ratio(spec, slo)
        tickets.fault_case(slo, "ticket", ratio, f"{_number(ratio * 100)}% bad (slow burn)")
    main.silence_cases()
    files = [(f"slo-{profile.name}.test.yml", main.render("burn-rate alert tests"), main.measured)]
    if tickets is not main:
        files.append(
            (
                f"slo-{profile.name}-ticket.test.yml",
                tickets.render("ticket tests on a coarse 5m/15m grid"),
                tickets.measured,
            )
        )
    return files


def _labels_text(metric: str, slo: SLO) -> str:
    return f'{metric}{{service="{slo.service}", slo="{slo.name}"}}'


def ttp_table(rows: Iterable[Measured]) -> str:
    """Markdown table of measured time-to-alert, for docs/slo.md."""
    lines = [
        "| profile | SLO | alert | fault (share of bad events) | fires after |",
        "|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(f"| {m.profile} | {m.slo} | {m.severity} | {m.fault} | {_human(m.seconds)} |")
    return "\n".join(lines)


def _human(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m"


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m labctl.slo", description=summary)
    parser.add_argument("--spec", type=Path, default=SPEC_PATH, help="SLO spec (slos.yaml)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed rule files differ from the spec",
    )
    parser.add_argument(
        "--write-tests",
        action="store_true",
        help="measure time-to-alert with promtool and rewrite the burn tests",
    )
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except (SpecError, OSError, KeyError, TypeError) as exc:
        print(f"slo spec error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = drifted(spec)
        for path in stale:
            print(f"out of date: {path.relative_to(REPO_ROOT)}", file=sys.stderr)
        if stale:
            print("run: uv run python -m labctl.slo", file=sys.stderr)
            return 1
        print("SLO rule files match the spec")
        return 0
    for path, text in render_all(spec).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    if args.write_tests:
        rows: list[Measured] = []
        with tempfile.TemporaryDirectory() as tmp:
            for profile in spec.profiles.values():
                for name, text, measured in generate_tests(spec, profile, Path(tmp)):
                    out = TESTS_DIR / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(text)
                    rows.extend(measured)
                    print(f"wrote {out.relative_to(REPO_ROOT)}", flush=True)
        print(ttp_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
