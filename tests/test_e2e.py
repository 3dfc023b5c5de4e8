"""End to end: the five services as real uvicorn processes; one checkout, one trace."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from services.topology import SERVICES as SERVICE_NAMES
from tests.support import INTERNAL, running_services, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_services(tmp_path_factory.mktemp("e2e")) as procs:
        yield procs


EXPECTED_SERVER_SPANS = {
    ("gateway", "POST /api/checkout"),
    ("auth", "GET /auth/verify"),
    ("order", "POST /orders"),
    ("payment", "POST /payments/charge"),
    ("notification", "POST /notifications"),
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def login(lab, user="alice", password="wonderland") -> str:
    r = httpx.post(
        lab.url("gateway") + "/api/login", json={"username": user, "password": password}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_checkout_produces_one_trace_across_five_services(lab):
    token = login(lab)
    r = httpx.post(
        lab.url("gateway") + "/api/checkout",
        json={
            "items": [{"product_id": "sku-grinder", "quantity": 1}],
            "card_number": "4242424242424242",
            "currency": "EUR",
        },
        headers={"Authorization": f"Bearer {token}", "X-Correlation-ID": "e2e-checkout-1"},
        timeout=15,
    )
    assert r.status_code == 201, r.text
    order_id = r.json()["order_id"]
    assert r.json()["status"] == "paid"
    assert r.headers["x-correlation-id"] == "e2e-checkout-1"
    trace_id = r.headers["x-trace-id"]

    # The order is paid in the order service's own database.
    data = lab.workdir / "data"
    with sqlite3.connect(data / "order.db") as db:
        assert db.execute("SELECT status FROM orders WHERE id=?", (order_id,)).fetchall() == [
            ("paid",)
        ]
    # Exactly one charge exists for it, in the payment service's own store.
    with sqlite3.connect(data / "payment.db") as db:
        charges = db.execute(
            "SELECT outcome, idempotency_key FROM charges WHERE order_id=?", (order_id,)
        ).fetchall()
    assert charges == [("approved", order_id)]

    # The confirmation is delivered by the worker.
    def delivered():
        rows = httpx.get(
            lab.url("notification") + "/notifications",
            params={"order_id": order_id},
            headers=INTERNAL,
            timeout=5,
        ).json()
        return rows and rows[0]["status"] == "delivered"

    wait_until(delivered, timeout=20, what="notification delivered")

    # One trace id spans all five services, shaped like GUIDE §2.
    def trace_spans():
        spans = [
            s
            for n in SERVICE_NAMES
            for s in read_jsonl(lab.span_file(n))
            if s["trace_id"] == trace_id
        ]
        # Each service exports in batches, and a server span ends after its children:
        # wait until every expected server span is written and no span's parent is missing.
        servers = {(s["service"], s["name"]) for s in spans if s["kind"] == "SERVER"}
        ids = {s["span_id"] for s in spans}
        complete = all(s["parent_span_id"] in ids for s in spans if s["parent_span_id"])
        return spans if EXPECTED_SERVER_SPANS <= servers and complete else None

    spans = wait_until(trace_spans, timeout=20, what="the whole trace across five services")
    by_id = {s["span_id"]: s for s in spans}

    def server(service, name):
        found = [
            s
            for s in spans
            if s["service"] == service and s["name"] == name and s["kind"] == "SERVER"
        ]
        assert len(found) == 1, f"{service} {name}: {found}"
        return found[0]

    def server_ancestor(span):
        """The nearest SERVER span above this one (skipping client spans)."""
        parent = by_id.get(span["parent_span_id"])
        while parent is not None and parent["kind"] != "SERVER":
            parent = by_id.get(parent["parent_span_id"])
        return parent

    root = server("gateway", "POST /api/checkout")
    assert root["parent_span_id"] is None
    assert server_ancestor(server("auth", "GET /auth/verify")) is root
    order = server("order", "POST /orders")
    assert server_ancestor(order) is root
    assert server_ancestor(server("payment", "POST /payments/charge")) is order
    # The confirmation is relayed from order's outbox (its span a child of the order's).
    relay = [s for s in spans if s["service"] == "order" and s["name"] == "relay confirmation"]
    assert len(relay) == 1 and server_ancestor(relay[0]) is order
    assert server_ancestor(server("notification", "POST /notifications")) is order
    sql = [
        s
        for s in spans
        if s["service"] == "order" and s["kind"] == "CLIENT" and "INSERT" in s["name"].upper()
    ]
    assert sql and all(server_ancestor(s) is order for s in sql), [s["name"] for s in spans]
    # every span of the trace hangs off the root
    for s in spans:
        if s is not root:
            assert s["parent_span_id"] in by_id, s

    # Every service logged this request with the same trace id (and the correlation id).
    for name in SERVICE_NAMES:

        def logged(n=name):
            lines = [
                json.loads(x) for x in lab.log_file(n).read_text().splitlines() if x.startswith("{")
            ]
            return [x for x in lines if x.get("trace_id") == trace_id]

        lines = wait_until(logged, timeout=10, what=f"{name} log lines with the trace id")
        assert all(
            x["correlation_id"] == "e2e-checkout-1" for x in lines if x["event"] == "request"
        ), lines
        assert all(x["service"] == name for x in lines)

    # The gateway's checkout RED series carry an exemplar pointing at a real trace.
    metrics = httpx.get(
        lab.url("gateway") + "/metrics",
        headers={"Accept": "application/openmetrics-text"},
        timeout=5,
    ).text
    assert 'http_requests_total{method="POST",route="/api/checkout",status="201"}' in metrics
    exemplars = [
        line.split('trace_id="')[1].split('"')[0]
        for line in metrics.splitlines()
        if 'route="/api/checkout"' in line and "# {trace_id=" in line
    ]
    assert exemplars
    known = {s["trace_id"] for s in read_jsonl(lab.span_file("gateway"))}
    assert set(exemplars) <= known


def test_logs_are_json_and_never_carry_secrets(lab):
    token = login(lab, "bob", "builder")
    httpx.post(
        lab.url("gateway") + "/api/checkout",
        json={
            "items": [{"product_id": "sku-mug", "quantity": 1}],
            "card_number": "4000000000000002",
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )
    httpx.post(
        lab.url("gateway") + "/api/login",
        json={"username": "bob", "password": "wrong-builder"},
        timeout=10,
    )
    for name in SERVICE_NAMES:
        text = lab.log_file(name).read_text()
        for line in text.splitlines():
            if line.strip():
                record = json.loads(line)  # every line is one JSON object
                for key in ("timestamp", "level", "service", "event"):
                    assert key in record, line
        assert "builder" not in text and "wonderland" not in text
        assert "4000000000000002" not in text and "4242424242424242" not in text
        assert token not in text
