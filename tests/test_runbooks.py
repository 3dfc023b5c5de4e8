"""Every alert has a runbook that names it, and docs/alerts.md lists every alert.

An alert whose runbook_url leads nowhere is worse than none at 3 a.m.; a runbook for an alert
that no longer exists misleads. Both directions are checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.config import loaded_rule_files

ROOT = Path(__file__).resolve().parents[1]
RULES = loaded_rule_files()  # what Prometheus loads
RUNBOOKS = ROOT / "docs" / "runbooks"
CATALOGUE = ROOT / "docs" / "alerts.md"
SECTIONS = ("## Confirm", "## Dashboard panels", "## Traces", "## Logs", "## Mitigate")


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


ALERTS = sorted({r["alert"] for r in alert_rules()})


def test_there_are_alerts() -> None:
    assert len(ALERTS) >= 19


@pytest.mark.parametrize("name", ALERTS)
def test_runbook_exists_and_names_its_alert(name: str) -> None:
    path = RUNBOOKS / f"{name}.md"
    assert path.is_file(), f"missing runbook {path.relative_to(ROOT)}"
    text = path.read_text()
    assert text.startswith(f"# {name}\n"), "the title is the alert name"
    assert f"`{name}`" in text
    for section in SECTIONS:
        assert section in text, f"{path.name} lacks {section!r}"
    assert "```promql" in text, "Confirm needs a PromQL query"
    assert "Jaeger" in text and "| json |" in text and "var/lab/logs/" in text


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_runbook_url_points_at_the_runbook(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url == f"docs/runbooks/{rule['alert']}.md"
    assert (ROOT / url).is_file()


def test_no_orphan_runbooks() -> None:
    orphans = {p.stem for p in RUNBOOKS.glob("*.md")} - set(ALERTS)
    assert orphans == set(), f"runbooks without an alert: {sorted(orphans)}"


def test_catalogue_lists_every_alert_with_its_severity() -> None:
    text = CATALOGUE.read_text()
    severities = {r["alert"]: r["labels"]["severity"] for r in alert_rules()}
    for name, severity in severities.items():
        row = re.search(rf"^\| `{name}` \| (\w+) \|", text, re.M)
        assert row, f"docs/alerts.md has no row for {name}"
        assert row[1] == severity, f"{name}: docs say {row[1]}, rule says {severity}"
