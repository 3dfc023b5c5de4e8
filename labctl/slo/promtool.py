"""Promtool tests of the burn-rate alerts, generated from the spec with measured times.

The inputs follow from the spec (selectors, objectives, windows); the expected times are
measured with promtool (binary search over evaluation steps). Over 400 lines because the
scenario builder, the measurement and the test-file writer are one algorithm read together.
"""

from __future__ import annotations

import ast
import math
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labctl import tables
from labctl.slo.rules import dump_yaml, matchers, ratio_record
from labctl.slo.spec import PROFILE_DIR, SLO, Profile, Spec, format_duration, number

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
                    "series": sli.metric + matchers(sli.selector, f'status="{ok_status}"'),
                    "values": counter(n, n - bad),
                }
            )
            out.append(
                {
                    "series": sli.metric + matchers(sli.selector, 'status="500"'),
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
                    "series": f"{sli.metric}_count" + matchers(sli.selector),
                    "values": counter(n, delivered),
                }
            )
            out.append(
                {
                    "series": f"{sli.metric}_bucket" + matchers(sli.selector, f'le="{le}"'),
                    "values": counter(n, delivered - delivered_bad),
                }
            )
            out.append(
                {
                    "series": f"{sli.metric}_bucket" + matchers(sli.selector, 'le="+Inf"'),
                    "values": counter(n, delivered),
                }
            )
        for i, ref in enumerate(sli.also_bad):
            per_fault = bad if (self.via_also_bad and i == 0) else 0
            out.append(
                {"series": ref.metric + matchers(ref.selector), "values": counter(0, per_fault)}
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
                    "expr": ratio_record(w),
                    "eval_time": checks[-1],
                    "exp_samples": [
                        {"labels": _labels_text(ratio_record(w), slo), "value": 0}
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
            "# GENERATED by `labctl slo write-tests` (make slo-tests): "
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
        main.fault_case(ttp_slo, "page", ratio, f"{number(ratio * 100)}% errors")
    for slo in spec.slos:
        if slo is not ttp_slo:
            main.fault_case(slo, "page", 1.0, "100% bad events")
        if slo.sli.also_bad:
            main.fault_case(slo, "page", 1.0, "100% dead-lettered (also_bad)", via_also_bad=True)
        ratio = _ticket_ratio(spec, slo)
        tickets.fault_case(slo, "ticket", ratio, f"{number(ratio * 100)}% bad (slow burn)")
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
    header = ("profile", "SLO", "alert", "fault (share of bad events)", "fires after")
    return tables.markdown(
        header, ((m.profile, m.slo, m.severity, m.fault, _human(m.seconds)) for m in rows)
    )


def _human(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{m}m{s:02d}s" if s else f"{m}m"
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m"
