"""Every PromQL expression of the Grafana dashboards runs against the native lab's Prometheus
(same prometheus.yml and rules as compose) under light Locust load, and returns data.

Dashboard variables are substituted as Grafana would: `$__rate_interval` -> 1m, `$route` -> its
"All" value, and `$service` / `$slo` by each of their values in turn; an expression passes when
it returns data for at least one value (a DB-pool panel is empty for the gateway, which has no
database, by design). Expressions that can only have data during a fault are listed in
EXPECTED_EMPTY with the reason; the test also fails if one of them is no longer in a dashboard.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from labctl.native.lab import NativeLab
from services.topology import SERVICES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
DEADLINE_SECONDS = 180

# (dashboard uid or "*", panel title) -> why it may be empty in a fault-free run.
NO_ALERTS = "ALERTS has series only while an alert is pending or firing; a healthy lab has none"
EXPECTED_EMPTY = {
    ("triagelab-load", "Firing and pending alerts"): NO_ALERTS,
    ("*", "annotation: Firing alerts"): NO_ALERTS,
}


def expected_empty(uid: str, title: str) -> bool:
    return (uid, title) in EXPECTED_EMPTY or ("*", title) in EXPECTED_EMPTY


FIXED = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "5m",
    "$route": ".*",
}


def _slos() -> list[str]:
    spec = yaml.safe_load((ROOT / "deploy" / "prometheus" / "slos.yaml").read_text())
    return [slo["name"] for slo in spec["slos"]]


def variants(expr: str) -> list[str]:
    """The expression with Grafana's variables filled in, one string per value combination."""
    for key, value in FIXED.items():
        expr = expr.replace(key, value)
    choices = {"$service": SERVICES, "$slo": tuple(_slos())}
    used = [name for name in choices if name in expr]
    out = []
    for combo in itertools.product(*(choices[name] for name in used)):
        text = expr
        for name, value in zip(used, combo, strict=True):
            text = text.replace(name, value)
        out.append(text)
    leftover = re.findall(r"\$\{?\w+", out[0] if out else expr)
    assert not leftover, f"unsubstituted variables {leftover} in {expr!r}"
    return out


def prometheus_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every Prometheus query in every dashboard."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        panels = [p for top in dash["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                if uid == "prometheus" and target.get("expr"):
                    found.append((dash["uid"], panel["title"], target["expr"]))
        for ann in dash.get("annotations", {}).get("list", []):
            if (ann.get("datasource") or {}).get("uid") == "prometheus":
                found.append((dash["uid"], f"annotation: {ann['name']}", ann["expr"]))
    return found


def label_value_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard uid, variable, metric selector, label) of every label_values() variable."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for var in dash.get("templating", {}).get("list", []):
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query or "")
            if var.get("type") == "query" and match:
                found.append((dash["uid"], var["name"], match[1], match[2]))
    return found


def test_every_panel_query_is_collected():
    queries = prometheus_queries()
    assert len(queries) > 60
    titles = {(uid, title) for uid, title, _ in queries}
    titles |= {("*", title) for _, title in titles}
    stale = set(EXPECTED_EMPTY) - titles
    assert not stale, f"EXPECTED_EMPTY names panels that no longer exist: {stale}"
    for _, _, expr in queries:
        assert variants(expr)


class Prom:
    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10, trust_env=False)

    def query(self, expr: str) -> dict:
        body = self.client.get("/api/v1/query", params={"query": expr}).json()
        return body

    def has_data(self, expr: str) -> tuple[bool, str]:
        body = self.query(expr)
        if body.get("status") != "success":
            return False, f"error: {body.get('error')}"
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return True, "scalar"
        return bool(result), f"{len(result)} series"


@pytest.fixture(scope="module")
def prom(native_lab: NativeLab) -> Prom:
    prom = Prom(native_lab.urls["prometheus"])
    # Wait until the load has gone through a whole checkout (the longest journey); the test then
    # polls every query with its own deadline. Bounded; polled, not slept.
    pace = threading.Event()
    deadline = time.monotonic() + DEADLINE_SECONDS
    ready = 'sum(orders_total{status="paid"}) > 0'
    while time.monotonic() < deadline:
        ok, _ = prom.has_data(ready)
        if ok:
            return prom
        pace.wait(1.0)
    seen = prom.query("sum by (name, outcome) (locust_requests_total)")
    pytest.fail(f"no paid order within {DEADLINE_SECONDS}s; Locust so far: {seen.get('data')}")


def test_every_dashboard_query_returns_data_from_the_native_lab(prom: Prom):
    pending = {
        (uid, title, expr)
        for uid, title, expr in prometheus_queries()
        if not expected_empty(uid, title)
    }
    errors: dict[tuple[str, str, str], str] = {}
    pace = threading.Event()
    deadline = time.monotonic() + 90  # slower series (workers, pools) appear within a minute
    for _ in range(200):
        for item in sorted(pending):
            outcomes = [prom.has_data(v) for v in variants(item[2])]
            if any(ok for ok, _ in outcomes):
                pending.discard(item)
                errors.pop(item, None)
            else:
                errors[item] = "; ".join(sorted({why for _, why in outcomes}))
        if not pending or time.monotonic() > deadline:
            break
        pace.wait(2.0)
    report = "\n".join(
        f"  {uid} / {title}: {errors[(uid, title, expr)]}\n    {expr}"
        for uid, title, expr in sorted(pending)
    )
    assert not pending, f"{len(pending)} dashboard queries return no data:\n{report}"


def test_expected_empty_queries_are_valid_promql(prom: Prom):
    for uid, title, expr in prometheus_queries():
        if expected_empty(uid, title):
            for text in variants(expr):
                body = prom.query(text)
                assert body["status"] == "success", f"{uid} / {title}: {body.get('error')}"


def test_template_variables_offer_every_service_and_slo(prom: Prom):
    expected = {"service": set(SERVICES), "slo": set(_slos())}
    queries = label_value_queries()
    assert {name for _, name, _, _ in queries} >= set(expected)
    for uid, name, selector, label in queries:
        if name not in expected:
            continue
        body = prom.client.get(f"/api/v1/label/{label}/values", params={"match[]": selector}).json()
        assert body["status"] == "success", body
        assert set(body["data"]) >= expected[name], f"{uid} ${name}: {body['data']}"
