"""Alertmanager config: amtool validation, routing per severity, and the inhibition rules.

amtool 0.25 can test routes but not inhibition, so inhibition is checked by evaluating the
parsed inhibit_rules with Alertmanager's semantics (matchers on source and target, `equal`
labels compared with a missing label reading as ""), against label sets taken from the real
alert rules.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from labctl.config import loaded_rule_files
from tests.support import require_binary

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RULES = loaded_rule_files()
_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def alert_rules() -> list[dict[str, Any]]:
    """Alerting rules Prometheus loads (the rule_files of prometheus.yml)."""
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("amtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def route(**labels: str) -> str:
    pairs = [f"{k}={v}" for k, v in labels.items()]
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *pairs)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_page_routes_to_page_receiver() -> None:
    assert route(alertname="ServiceDown", severity="page", service="payment") == "page"


def test_ticket_routes_to_ticket_receiver() -> None:
    labels = {
        "alertname": "CheckoutAvailabilityBudgetBurnTicket",
        "severity": "ticket",
        "service": "gateway",
        "slo": "checkout-availability",
    }
    assert route(**labels) == "ticket"


def test_verify_receivers_flag_rejects_a_wrong_route() -> None:
    """The amtool check above would be worthless if amtool accepted any receiver."""
    result = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        "--verify.receivers=page",
        "severity=ticket",
        "service=order",
    )
    assert result.returncode != 0


def test_alert_without_severity_still_reaches_someone() -> None:
    assert route(alertname="Unknown", service="order") == "ticket"


def test_every_rule_severity_has_a_route() -> None:
    for rule in alert_rules():
        severity = rule["labels"]["severity"]
        assert route(alertname=rule["alert"], severity=severity, service="x") == severity


def test_grouping_and_lab_timings() -> None:
    root = config()["route"]
    assert set(root["group_by"]) == {"alertname", "service"}
    assert root["group_wait"] == "5s"
    assert root["group_interval"] == "30s"


def test_receivers_are_the_lab_webhook() -> None:
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config()["receivers"]}
    assert urls == {
        "page": "http://127.0.0.1:9095/hook/page",
        "ticket": "http://127.0.0.1:9095/hook/ticket",
    }


# --------------------------------------------------------------------------- inhibition


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    parsed = _MATCHER.match(matcher)
    assert parsed, f"unparsed matcher {matcher!r}"
    name, op, value = parsed.groups()
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    full = re.fullmatch(value, actual) is not None
    return full if op == "=~" else not full


def inhibited(target: dict[str, str], firing: list[dict[str, str]]) -> bool:
    """Alertmanager's decision: is `target` muted by any firing alert?"""
    for rule in config()["inhibit_rules"]:
        if not all(_matches(m, target) for m in rule["target_matchers"]):
            continue
        for source in firing:
            if source == target:
                continue
            if not all(_matches(m, source) for m in rule["source_matchers"]):
                continue
            if all(source.get(lbl, "") == target.get(lbl, "") for lbl in rule.get("equal", [])):
                return True
    return False


def labels_of(name: str, service: str | None = None) -> dict[str, str]:
    """Labels an alert of the real rules would carry, templates resolved for `service`."""
    rule = next(r for r in alert_rules() if r["alert"] == name)
    labels = {"alertname": name, **rule["labels"]}
    if "{{" in labels["service"]:
        assert service, f"{name} takes its service from the series"
        labels["service"] = service
    elif service:
        assert labels["service"] == service or name == "ServiceTargetMissing"
        labels["service"] = service
    return labels


def test_service_down_inhibits_its_own_error_and_latency_alerts() -> None:
    down = labels_of("ServiceDown", "payment")
    for name in ("ServiceHigh5xxRatio", "ServiceHighLatencyP99", "DBPoolSaturated"):
        assert inhibited(labels_of(name, "payment"), [down]), name
        assert not inhibited(labels_of(name, "gateway"), [down]), f"{name} of another service"


def test_missing_target_inhibits_like_service_down() -> None:
    missing = labels_of("ServiceTargetMissing", "order")
    assert inhibited(labels_of("ServiceHigh5xxRatio", "order"), [missing])


def test_service_down_does_not_mute_user_facing_slo_pages() -> None:
    down = labels_of("ServiceDown", "gateway")
    assert not inhibited(labels_of("CheckoutAvailabilityBudgetBurnPage"), [down])
    assert not inhibited(labels_of("ServiceDown", "gateway"), [down])


def test_slo_page_inhibits_the_same_slo_ticket_only() -> None:
    page = labels_of("CheckoutAvailabilityBudgetBurnPage")
    assert inhibited(labels_of("CheckoutAvailabilityBudgetBurnTicket"), [page])
    assert not inhibited(labels_of("LoginAvailabilityBudgetBurnTicket"), [page])
    assert not inhibited(labels_of("CheckoutLatencyBudgetBurnTicket"), [page])


def test_notification_stall_page_inhibits_the_delivery_tickets() -> None:
    stalled = labels_of("NotificationDeliveryStalled")
    assert inhibited(labels_of("NotificationBacklogGrowing"), [stalled])
    assert inhibited(labels_of("NotificationDeliveryBudgetBurnTicket"), [stalled])


def test_empty_label_trap() -> None:
    """Alerts without `slo` must not inhibit each other through `equal: [slo]`."""
    page = labels_of("ServiceHigh5xxRatio", "order")
    ticket = labels_of("DependencyCallsFailing", "order")
    assert "slo" not in page and "slo" not in ticket
    assert not inhibited(ticket, [page])
    # and the config itself requires a non-empty value on both sides of every equal label
    for rule in config()["inhibit_rules"]:
        for label in rule["equal"]:
            for side in ("source_matchers", "target_matchers"):
                assert f'{label}=~".+"' in rule[side], f"{side} must require {label}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_carries_the_equal_labels_it_participates_with(rule: dict) -> None:
    labels = rule["labels"]
    assert labels.get("service"), "service is used by equal: [service]"
    if "BudgetBurn" in rule["alert"]:
        assert labels.get("slo"), "SLO alerts need slo for equal: [slo]"
