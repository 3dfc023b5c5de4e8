"""Prometheus recording and alerting rules rendered from the SLO spec (one file per profile)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from labctl.config import loaded_rule_files
from labctl.slo.spec import (
    DENOMINATOR_FLOOR,
    PROFILE_DIR,
    RUNBOOK_DIR,
    SEVERITIES,
    SLI,
    SLO,
    Profile,
    Spec,
    format_duration,
    number,
)

# --------------------------------------------------------------------------- PromQL


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def matchers(selector: dict[str, str], *extra: str) -> str:
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
    extra = [_sum_rate(c.metric + matchers(c.selector), window) for c in sli.also_bad]
    if sli.kind == "availability":
        total = _sum_rate(sli.metric + matchers(sli.selector), window)
        bad = _sum_rate(sli.metric + matchers(sli.selector, 'status=~"5.."'), window)
    else:
        assert sli.threshold is not None
        total = _sum_rate(f"{sli.metric}_count" + matchers(sli.selector), window)
        good = _sum_rate(
            f"{sli.metric}_bucket" + matchers(sli.selector, le_matcher(sli.threshold)), window
        )
        # clamp_min: bucket and _count are scraped together, but never let rounding go negative.
        bad = f"clamp_min(\n    {total}\n    - {good},\n    0\n  )"
    bad_terms = "\n  + ".join([bad, *extra])
    total_terms = "\n  + ".join([total, *extra])
    return f"(\n  {bad_terms}\n)\n/\nclamp_min(\n  {total_terms},\n  {DENOMINATOR_FLOOR}\n)"


# --------------------------------------------------------------------------- rules


def ratio_record(nominal: int) -> str:
    return f"slo:sli_error:ratio_rate{format_duration(nominal)}"


def _burn_record(nominal: int) -> str:
    return f"slo:burn_rate:{format_duration(nominal)}"


def _windows_text(spec: Spec, profile: Profile, severity: str) -> str:
    parts = []
    for b in spec.burn_alerts:
        if b.severity != severity:
            continue
        parts.append(
            f"> {number(b.burn_rate)}x over {format_duration(profile.window(b.long))} and "
            f"{format_duration(profile.window(b.short))} (Workbook {format_duration(b.long)}/"
            f"{format_duration(b.short)})"
        )
    return "; or ".join(parts)


def _alert_rule(spec: Spec, profile: Profile, slo: SLO, severity: str) -> dict[str, Any]:
    tiers = []
    for b in spec.burn_alerts:
        if b.severity != severity:
            continue
        rate = number(b.burn_rate)
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
        f"The {slo.title.lower()} SLO ({number(slo.objective * 100)}% over {period}) "
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
                f"{slo.title} SLO ({number(slo.objective * 100)}%) is burning its error budget "
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
                "expr": f"vector({number(slo.objective)})",
                "labels": labels,
            },
        ]
        for nominal in spec.nominal_windows():
            window = format_duration(profile.window(nominal))
            rules.append(
                {
                    "record": ratio_record(nominal),
                    "expr": error_ratio_expr(slo.sli, window),
                    "labels": labels,
                }
            )
        burn_windows = sorted({w for b in spec.burn_alerts for w in (b.long, b.short)})
        for nominal in burn_windows:
            rules.append(
                {
                    "record": _burn_record(nominal),
                    "expr": f"{ratio_record(nominal)}{sel} / {number(slo.budget)}",
                    "labels": labels,
                }
            )
        rules.append(
            {
                "record": "slo:error_budget:remaining_ratio",
                "expr": f"1 - {ratio_record(profile.period)}{sel} / {number(slo.budget)}",
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
        "# GENERATED by `labctl slo render` (make rules) from deploy/prometheus/slos.yaml.\n"
        "# Do not edit: change the spec and regenerate (docs/slo.md).\n"
        f"# Profile: {profile.name} (compression {profile.compression}x, windows {windows}).\n"
    )
    return header + dump_yaml(build_rules(spec, profile))


def render_all(spec: Spec) -> dict[Path, str]:
    """Every generated rule file, keyed by path: one per profile."""
    return {
        PROFILE_DIR / f"slo-{name}.yml": render_profile(spec, profile)
        for name, profile in spec.profiles.items()
    }


def loading_problems(spec: Spec, config: Path | None = None) -> list[str]:
    """What is wrong with the SLO profiles Prometheus loads: it must load exactly one of them
    (both define the same rule names), and nothing else from slo-profiles/."""
    loaded = loaded_rule_files() if config is None else loaded_rule_files(config)
    profiles = [p for p in loaded if p.parent == PROFILE_DIR]
    generated = set(render_all(spec))
    problems = [f"{p.name} is loaded but not generated from the spec" for p in profiles
                if p not in generated]  # fmt: skip
    if len(profiles) != 1:
        names = ", ".join(p.name for p in profiles) or "none"
        problems.append(f"prometheus.yml must load exactly one SLO profile, it loads: {names}")
    return problems


def drifted(spec: Spec) -> list[Path]:
    """Generated files whose committed content differs from what the spec produces now."""
    return [
        path
        for path, text in render_all(spec).items()
        if not path.exists() or path.read_text() != text
    ]
