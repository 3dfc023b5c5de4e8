"""The SLO generator: spec -> committed rule files, lab compression, NaN guards, time-to-page.

The promtool runs themselves live in test_rules.py; here the measured firing times written into
the generated promtool tests are checked against the SRE Workbook's closed form, and against the
table published in docs/slo.md.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from labctl import cli, slo
from labctl.config import loaded_rule_files

ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = ROOT / "deploy" / "prometheus" / "tests"
DOC = ROOT / "docs" / "slo.md"
_GROUP = re.compile(
    r"^(?P<alert>\w+): (?P<fault>(?P<pct>[\d.]+)% .*) from t=(?P<start>\S+) "
    r"fires after (?P<ttp>\S+)$"
)


@pytest.fixture(scope="module")
def spec() -> slo.Spec:
    return slo.load_spec()


def test_committed_rule_files_match_the_spec(spec: slo.Spec) -> None:
    stale = slo.drifted(spec)
    assert stale == [], f"regenerate with `make rules`: {stale}"


def test_check_flag_passes_now_and_fails_on_drift(tmp_path: Path, capsys) -> None:
    assert cli.main(["slo", "check"]) == 0
    changed = slo.SPEC_PATH.read_text().replace("objective: 0.999", "objective: 0.995", 1)
    edited = tmp_path / "slos.yaml"
    edited.write_text(changed)
    assert cli.main(["slo", "check", "--spec", str(edited)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_lab_profile_compression(spec: slo.Spec) -> None:
    lab, standard = spec.profiles["lab"], spec.profiles["standard"]
    d, h, m = 86400, 3600, 60
    windows = {n: lab.window(n) for n in spec.nominal_windows()}
    assert windows == {5 * m: 20, 30 * m: 20, h: 20, 6 * h: m, 3 * d: 12 * m, 30 * d: 2 * h}
    # a slow burn's ticket reads a 12-minute window: it can fire inside a 20-minute drill
    assert lab.window(3 * d) <= 20 * m
    for nominal in spec.nominal_windows():
        assert lab.window(nominal) >= 4 * max(lab.scrape_interval, lab.evaluation_interval)
        assert standard.window(nominal) == nominal


def test_spec_refuses_windows_under_four_scrapes(tmp_path: Path) -> None:
    text = slo.SPEC_PATH.read_text().replace("min_window: 20s", "min_window: 5s")
    bad = tmp_path / "slos.yaml"
    bad.write_text(text)
    with pytest.raises(slo.SpecError, match="4x the scrape"):
        slo.load_spec(bad)


def test_le_matcher_accepts_both_spellings() -> None:
    assert slo.le_matcher(0.5) == 'le="0.5"'
    matcher = slo.le_matcher(60)
    pattern = matcher.split('"')[1].replace("\\\\", "\\")
    assert re.fullmatch(pattern, "60") and re.fullmatch(pattern, "60.0")
    assert not re.fullmatch(pattern, "600")


def test_every_ratio_is_nan_safe_and_absent_safe(spec: slo.Spec) -> None:
    for profile in spec.profiles.values():
        for group in slo.build_rules(spec, profile)["groups"]:
            for rule in group["rules"]:
                if not rule.get("record", "").startswith("slo:sli_error:"):
                    continue
                expr = rule["expr"]
                assert expr.count("rate(") == expr.count("or vector(0)"), expr
                assert re.search(r"clamp_min\(\s*.*,\s*1e-9\s*\)\s*$", expr, re.S), expr
                assert rule["labels"]["slo"] and rule["labels"]["service"]


def test_notification_sli_counts_dead_letters_as_bad(spec: slo.Spec) -> None:
    delivery = next(s for s in spec.slos if s.name == "notification-delivery")
    expr = slo.error_ratio_expr(delivery.sli, "1m")
    numerator, denominator = expr.split("\n/\n")
    for part in (numerator, denominator):
        assert 'notifications_total{service="notification",outcome="dead_lettered"}' in part
    assert 'le=~"60|60\\\\.0"' in numerator


def test_profiles_share_rule_names_so_only_one_is_loaded(spec: slo.Spec) -> None:
    def names(profile: slo.Profile) -> list[str]:
        return [
            r.get("record") or r["alert"]
            for g in slo.build_rules(spec, profile)["groups"]
            for r in g["rules"]
        ]

    assert names(spec.profiles["lab"]) == names(spec.profiles["standard"])
    loaded = sorted(p.name for p in loaded_rule_files())
    assert loaded == ["alerts.yml", "slo-lab.yml"]


def test_burn_alerts_follow_workbook_table(spec: slo.Spec) -> None:
    rows = {(b.severity, b.long, b.short, b.burn_rate) for b in spec.burn_alerts}
    assert rows == {
        ("page", 3600, 300, 14.4),
        ("page", 21600, 1800, 6.0),
        ("ticket", 259200, 21600, 1.0),
    }


# --------------------------------------------------------------------------- time to page


def _measured(spec: slo.Spec) -> list[tuple[slo.Measured, float, slo.Profile]]:
    """(measurement, error ratio, grid profile) read back from the generated promtool tests."""
    by_alert = {s.alert_name(sev): (s, sev) for s in spec.slos for sev in slo.SEVERITIES}
    out = []
    for path in sorted(TESTS_DIR.glob("slo-*.test.yml")):
        profile = spec.profiles[path.name.split("-")[1].split(".")[0]]
        doc = yaml.safe_load(path.read_text())
        grid = replace(
            profile,
            scrape_interval=slo.parse_duration(doc["tests"][0]["interval"]),
            evaluation_interval=slo.parse_duration(doc["evaluation_interval"]),
        )
        for group in doc["tests"]:
            match = _GROUP.match(group["name"])
            if match is None:
                continue
            target, severity = by_alert[match["alert"]]
            start = slo.parse_duration(match["start"])
            ttp = 0 if match["ttp"] == "0s" else slo.parse_duration(match["ttp"])
            firing = [c for c in group["alert_rule_test"] if c["exp_alerts"]]
            assert len(firing) == 1
            assert slo.parse_duration(firing[0]["eval_time"]) - start == ttp, group["name"]
            measured = slo.Measured(profile.name, target.name, severity, match["fault"], ttp)
            out.append((measured, float(match["pct"]) / 100, grid))
    return out


def workbook_time(
    spec: slo.Spec, profile: slo.Profile, target: slo.SLO, severity: str, error_ratio: float
) -> float:
    """Closed form: both windows of a tier must see error_ratio above burn_rate x budget."""
    times = []
    for b in spec.burn_alerts:
        if b.severity != severity or error_ratio <= b.burn_rate * target.budget:
            continue
        share = b.burn_rate * target.budget / error_ratio
        times.append(max(profile.window(b.long), profile.window(b.short)) * share)
    return min(times)


def test_measured_time_to_page_matches_the_workbook(spec: slo.Spec) -> None:
    rows = _measured(spec)
    assert len(rows) >= 2 * (len(slo.TTP_FAULTS) + len(spec.slos))
    for measured, ratio, grid in rows:
        ttp = measured.seconds
        target = next(s for s in spec.slos if s.name == measured.slo)
        expected = workbook_time(spec, grid, target, measured.severity, ratio)
        # Prometheus only sees the fault at the next scrape and fires at the next evaluation;
        # rate() extrapolation at the window edges can shift it by about one more scrape.
        slack = 2 * grid.scrape_interval + grid.evaluation_interval
        assert expected - slack <= ttp <= expected + slack, (measured, expected)


def test_docs_table_is_the_measured_one(spec: slo.Spec) -> None:
    text = DOC.read_text()
    for line in slo.ttp_table(m for m, _, _ in _measured(spec)).splitlines()[2:]:
        assert line in text, f"docs/slo.md lacks the measured row: {line}"
