"""Prometheus rules: lint, unit tests (promtool), and the metadata every alert must carry.

promtool is a hard requirement: a missing binary fails these tests instead of skipping them,
because skipped alert tests look exactly like passing ones in CI.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl import cli, slo
from labctl.config import loaded_rule_files
from tests.support import require_binary

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
LOADED_RULES = loaded_rule_files()
PROFILE_RULES = sorted((PROM / "slo-profiles").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.test.yml"))
SEVERITIES = {"page", "ticket"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)


def alert_rules(files: list[Path] = LOADED_RULES) -> list[dict[str, Any]]:
    rules = []
    for path in files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


def alert_names(files: list[Path] = LOADED_RULES) -> set[str]:
    return {r["alert"] for r in alert_rules(files)}


def test_rule_files_exist() -> None:
    names = {p.name for p in LOADED_RULES}
    assert names == {"alerts.yml", "slo-lab.yml"}  # no copy of a profile: the file itself
    assert {p.name for p in PROFILE_RULES} == {"slo-standard.yml", "slo-lab.yml"}


@pytest.mark.parametrize("path", sorted({*LOADED_RULES, *PROFILE_RULES}), ids=lambda p: p.name)
def test_promtool_check_rules_lint(path: Path) -> None:
    result = run(
        require_binary("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_loaded_rules_have_no_duplicate_series() -> None:
    """Prometheus loads its rule_files together: lint them as one set."""
    result = run(
        require_binary("promtool"),
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        *map(str, LOADED_RULES),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    result = run(require_binary("promtool"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_unit_test_files_set_their_intervals(path: Path) -> None:
    """promtool 2.42 silently passes tests whose grid defaults do not match the rules."""
    doc = yaml.safe_load(path.read_text())
    assert doc.get("evaluation_interval"), f"{path.name}: set evaluation_interval"
    for group in doc["tests"]:
        assert group.get("interval"), f"{path.name}: group {group.get('name')!r} lacks interval"
    for rule_file in doc["rule_files"]:
        assert (path.parent / rule_file).resolve().exists(), rule_file


def _cases(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(rule file the test loads, alert test case) for every case in the unit test files."""
    out = []
    for path in files:
        doc = yaml.safe_load(path.read_text())
        for group in doc["tests"]:
            for case in group.get("alert_rule_test") or ():
                for rule_file in doc["rule_files"]:
                    out.append((Path(rule_file).name, case))
    return out


@pytest.mark.parametrize("rule_file", sorted({*LOADED_RULES, *PROFILE_RULES}), ids=lambda p: p.name)
def test_every_alert_is_tested_firing_and_silent(rule_file: Path) -> None:
    cases = [c for f, c in _cases(TEST_FILES) if f == rule_file.name]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = alert_names([rule_file])
    assert names, rule_file
    assert names - fired == set(), f"never shown to fire: {sorted(names - fired)}"
    assert names - silent == set(), f"never shown to stay silent: {sorted(names - silent)}"


def test_every_alert_is_silent_at_zero_traffic() -> None:
    """Each loaded rule file has a test group with no traffic in which every alert is silent."""
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        if not any(Path(f).name in {"alerts.yml", "slo-lab.yml"} for f in doc["rule_files"]):
            continue
        zero = [g for g in doc["tests"] if "zero traffic" in g.get("name", "")]
        assert zero, f"{path.name}: no zero-traffic group"
        rule_file = PROM / "tests" / doc["rule_files"][0]
        silent = {
            c["alertname"] for g in zero for c in g["alert_rule_test"] if not c.get("exp_alerts")
        }
        assert alert_names([rule_file.resolve()]) <= silent


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_metadata(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
    assert labels.get("severity") in SEVERITIES
    assert labels.get("service"), f"{name}: service label missing (inhibition uses it)"
    summary = annotations.get("summary", "")
    assert "$value" in summary, f"{name}: summary must show the current value"
    description = annotations.get("description", "")
    for part in ("Impact:", "Likely causes:", "First actions:"):
        assert part in description, f"{name}: description lacks {part!r}"
    assert annotations.get("runbook_url") == f"docs/runbooks/{name}.md"


def test_burn_rate_alerts_have_no_for_and_symptoms_do() -> None:
    for rule in alert_rules():
        if rule.get("labels", {}).get("slo") and "BudgetBurn" in rule["alert"]:
            assert "for" not in rule, rule["alert"]
        elif "BudgetBurn" not in rule["alert"]:
            assert rule.get("for"), f"{rule['alert']}: symptom alerts need for: against flapping"


def test_symptom_alert_windows_respect_the_scrape_interval() -> None:
    """Every range in the loaded rules is >= 4x the lab scrape interval (5s)."""
    for path in LOADED_RULES:
        for window in re.findall(r"\[(\d+)([smh])\]", path.read_text()):
            seconds = int(window[0]) * {"s": 1, "m": 60, "h": 3600}[window[1]]
            assert seconds >= 20, f"{path.name}: range {window} is under 4x the 5s scrape"


def test_prometheus_loads_exactly_one_generated_slo_profile(tmp_path: Path) -> None:
    spec = slo.load_spec()
    assert slo.loading_problems(spec) == []
    config = PROM / "prometheus.yml"
    both = config.read_text().replace(
        "  - slo-profiles/slo-lab.yml\n",
        "  - slo-profiles/slo-lab.yml\n  - slo-profiles/slo-standard.yml\n",
    )
    assert both != config.read_text()
    for folder in ("rules", "slo-profiles"):  # the layout Prometheus sees, as in the native lab
        (tmp_path / folder).symlink_to(PROM / folder)
    edited = tmp_path / "prometheus.yml"
    edited.write_text(both)
    assert "exactly one SLO profile" in " ".join(slo.loading_problems(spec, edited))
    assert cli.main(["slo", "check", "--prometheus-config", str(edited)]) == 1
    edited.write_text(config.read_text().replace("  - slo-profiles/slo-lab.yml\n", ""))
    assert "it loads: none" in " ".join(slo.loading_problems(spec, edited))


def test_prometheus_config_loads_the_rules() -> None:
    config = PROM / "prometheus.yml"
    if not config.exists():
        pytest.skip("deploy/prometheus/prometheus.yml not written yet (owned by the native lab)")
    doc = yaml.safe_load(config.read_text())
    assert "rules/*.yml" in doc.get("rule_files", []), "prometheus.yml must load rules/*.yml"
    assert "slo-profiles/slo-lab.yml" in doc["rule_files"], "and the lab's SLO profile"
    result = run(require_binary("promtool"), "check", "config", "--lint=all", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    for rules in LOADED_RULES:
        assert str(rules.name) in result.stdout + result.stderr
