"""Every cent and every confirmation through the faults the drills inject (real processes).

Each test reproduces a failure the checkout used to have (issue: "The checkout keeps every cent
and every confirmation through any fault") and ends with the post-drill data check
(labctl.drills.data_check) over what the services hold: it must find nothing wrong.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from labctl.drills.data_check import check_data, fetch_state, wait_and_fetch
from tests.support import ADMIN, INTERNAL, as_shopper, running_services, wait_until

pytestmark = pytest.mark.integration

CARD_OK = "4242424242424242"
CART = [{"product_id": "sku-grinder", "quantity": 1}]
FAST = {
    "ORDER_RECONCILE_SECONDS": "0.3",
    "ORDER_AUDIT_SECONDS": "0.5",
    "OUTBOX_POLL_SECONDS": "0.1",
}


def token(procs, user: str = "alice", password: str = "wonderland") -> dict[str, str]:
    r = httpx.post(
        procs.url("gateway") + "/api/login",
        json={"username": user, "password": password},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def shoppers(procs, n: int) -> list[dict[str, str]]:
    return [token(procs, f"shopper{i:02d}", "triagelab") for i in range(1, n + 1)]


def checkout(procs, auth, key: str | None = None, items=CART, timeout: float = 20):
    headers = {**auth, **({"Idempotency-Key": key} if key else {})}
    return httpx.post(
        procs.url("gateway") + "/api/checkout",
        json={"items": items, "card_number": CARD_OK},
        headers=headers,
        timeout=timeout,
    )


def fault(procs, service: str, **spec) -> None:
    r = httpx.post(
        procs.url(service) + "/admin/faults", json={"fault": spec}, headers=ADMIN, timeout=5
    )
    assert r.status_code in (200, 201), r.text


def clear_faults(procs, service: str) -> None:
    httpx.delete(procs.url(service) + "/admin/faults", headers=ADMIN, timeout=5)


def settled(procs, since: float, timeout: float = 60) -> dict[str, list[dict]]:
    urls = {n: procs.url(n) for n in procs.names}
    with httpx.Client(timeout=10, headers=INTERNAL) as http:
        return wait_and_fetch(http, urls, since, timeout, time.sleep, poll_seconds=0.2)


def accepted(responses) -> set[str]:
    return {r.json()["order_id"] for r in responses if r.status_code == 201}


def test_payment_latency_straddling_the_timeout_charges_only_paid_orders(tmp_path):
    """Measured on the old code: 8 of 24 orders payment_failed, each with an approved charge."""
    with running_services(tmp_path, **FAST) as procs:
        auths = shoppers(procs, 8)
        since = time.time()
        fault(procs, "payment", kind="latency", ms=2000, jitter_ms=150, route="/payments/charge")
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: checkout(procs, auths[i % 8]), range(24)))
        clear_faults(procs, "payment")
        codes = sorted({(r.status_code, r.json().get("code", "")) for r in responses})
        # The fault straddles the 2 s timeout: some charges answer in time, some do not.
        assert (201, "") in codes and (504, "payment_pending") in codes, codes
        state = settled(procs, since)
        result = check_data(accepted(responses), state)
        assert result["ok"], result["problems"]
        assert result["orders"] == 24
        assert set(result["orders_by_status"]) <= {"paid", "payment_failed"}


def test_a_charge_that_outlives_the_timeout_settles_the_order_paid_and_a_retry_replays_it(
    tmp_path,
):
    """PAYMENT_TIMEOUT_SECONDS=0.5 against a 1.5 s processor: the old code failed 3 of 3 orders
    and kept the 3 charges."""
    env = {
        **FAST,
        "PAYMENT_TIMEOUT_SECONDS": "0.5",
        "PAYMENT_LATENCY_MEDIAN_MS": "1500",
        "PAYMENT_LATENCY_SIGMA": "0",
    }
    with running_services(tmp_path, **env) as procs:
        auth = token(procs)
        since = time.time()
        keys = [uuid.uuid4().hex for _ in range(3)]
        first = [checkout(procs, auth, key) for key in keys]
        for r in first:  # told "not known yet", never "failed"
            assert r.status_code == 504 and r.json()["code"] == "payment_pending", r.text
            assert r.json()["details"]["status"] == "payment_unknown"
        state = settled(procs, since)
        result = check_data(None, state)
        assert result["ok"], result["problems"]
        assert result["orders_by_status"] == {"paid": 3}
        assert result["charges_by_outcome"] == {"approved": 3}
        assert result["notifications_by_status"] == {"delivered": 3}
        # The shopper re-sends with the same key: the settled answer, not a second purchase.
        for key, r in zip(keys, first, strict=True):
            again = checkout(procs, auth, key)
            assert again.status_code == 201, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["order_id"] == r.json()["details"]["order_id"]
        assert len(fetch_state(httpx.Client(headers=INTERNAL), _urls(procs), since)["orders"]) == 3


def test_order_answers_inside_the_gateways_budget_and_retries_never_buy_twice(tmp_path):
    """The gateway gives order 2.5 s while order may spend 3 x 1 s on payment: the old gateway
    answered 504 first, two orders became paid behind its back, and a re-send bought twice."""
    env = {**FAST, "ORDER_TIMEOUT_SECONDS": "2.5", "PAYMENT_TIMEOUT_SECONDS": "1"}
    with running_services(tmp_path, **env) as procs:
        auths = shoppers(procs, 6)
        since = time.time()
        fault(procs, "payment", kind="latency", ms=900, jitter_ms=300, route="/payments/charge")
        keys = [uuid.uuid4().hex for _ in range(12)]
        with ThreadPoolExecutor(6) as pool:
            first = list(pool.map(lambda i: checkout(procs, auths[i % 6], keys[i]), range(12)))
        # Every answer is order's own (the deadline travels with the request): the gateway
        # never had to give up on order itself.
        for r in first:
            body = r.json()
            assert not (r.status_code == 504 and body.get("details", {}).get("peer") == "order"
                        and body["code"] == "upstream_timeout"), body  # fmt: skip
        clear_faults(procs, "payment")
        state = settled(procs, since)
        result = check_data(accepted(first), state)
        assert result["ok"], result["problems"]
        # A shopper who got no success re-sends the same purchase: the final answer comes back.
        for i, r in enumerate(first):
            again = checkout(procs, auths[i % 6], keys[i])
            assert again.headers.get("idempotent-replayed") == "true", again.text
            if r.status_code == 201:
                assert again.status_code == 201
        after = check_data(None, fetch_state(httpx.Client(headers=INTERNAL), _urls(procs), since))
        assert after["ok"], after["problems"]
        assert after["orders"] == 12  # twelve purchases, twelve orders: nobody bought twice


def test_idempotency_key_replays_refuses_another_cart_and_is_per_shopper(tmp_path):
    with running_services(tmp_path, **FAST) as procs:
        alice, bob = token(procs), token(procs, "bob", "builder")
        since = time.time()
        key = "checkout-" + uuid.uuid4().hex
        r1 = checkout(procs, alice, key)
        assert r1.status_code == 201 and "idempotent-replayed" not in r1.headers
        r2 = checkout(procs, alice, key)
        assert r2.status_code == 201 and r2.headers["idempotent-replayed"] == "true"
        assert r2.json()["order_id"] == r1.json()["order_id"]
        other_cart = checkout(procs, alice, key, items=[{"product_id": "sku-mug", "quantity": 1}])
        assert other_cart.status_code == 422, other_cart.text
        assert other_cart.json()["code"] == "idempotency_key_reused"
        bobs = checkout(procs, bob, key)  # the same key from another shopper is another purchase
        assert bobs.status_code == 201 and bobs.json()["order_id"] != r1.json()["order_id"]
        bad = checkout(procs, alice, "has space")
        assert bad.status_code == 422 and bad.json()["code"] == "validation_error"

        # Two sends at once: one purchase (the loser is told it is in progress, or replayed).
        fault(procs, "payment", kind="latency", ms=400, route="/payments/charge")
        twin = uuid.uuid4().hex
        with ThreadPoolExecutor(2) as pool:
            pair = list(pool.map(lambda _: checkout(procs, alice, twin), range(2)))
        clear_faults(procs, "payment")
        assert sorted(r.status_code for r in pair) in ([201, 201], [201, 409]), pair
        conflict = [r for r in pair if r.status_code == 409]
        if conflict:
            assert conflict[0].json()["code"] == "checkout_in_progress"
            assert conflict[0].headers["retry-after"] == "1"
        result = check_data(accepted([r1, bobs, *pair]), settled(procs, since))
        assert result["ok"], result["problems"]
        assert result["orders"] == 3


def test_confirmations_survive_a_notification_outage_and_an_order_crash(tmp_path):
    """The old gateway kept deferred confirmations in memory: a full queue killed its worker,
    and a restart lost them all."""
    with running_services(tmp_path, **FAST) as procs:
        auth = token(procs)
        since = time.time()
        procs.pause("notification")  # a hung notification service: connects, never answers
        responses = [checkout(procs, auth, uuid.uuid4().hex, timeout=10) for _ in range(10)]
        assert [r.status_code for r in responses] == [201] * 10  # an outage fails no checkout
        outbox = httpx.get(procs.url("order") + "/outbox", headers=INTERNAL, timeout=5).json()
        assert {m["status"] for m in outbox} == {"pending"} and len(outbox) == 10
        procs.crash_and_restart("order")  # SIGKILL with ten confirmations undelivered
        procs.resume("notification")
        result = check_data(accepted(responses), settled(procs, since))
        assert result["ok"], result["problems"]
        assert result["notifications_by_status"] == {"delivered": 10}
        assert result["outbox_by_status"] == {"delivered": 10}


def test_a_notification_4xx_is_dead_lettered_not_counted_as_queued(tmp_path):
    with running_services(tmp_path, **FAST) as procs:
        # order's relay now talks to a service that answers 404 to /notifications
        procs.crash_and_restart("order", NOTIFICATION_URL=procs.url("auth"))
        since = time.time()
        r = httpx.post(
            procs.url("order") + "/orders",
            json={"items": CART, "card_number": CARD_OK},
            headers=as_shopper("alice"),
            timeout=10,
        )
        assert r.status_code == 201, r.text

        def dead() -> list[dict]:
            rows = httpx.get(procs.url("order") + "/outbox", headers=INTERNAL, timeout=5).json()
            return [m for m in rows if m["status"] == "dead_lettered"]

        rows = wait_until(dead, timeout=20, what="the refused confirmation dead-lettered")
        assert rows[0]["attempts"] == 1 and "404" in rows[0]["last_error"]
        metrics = httpx.get(procs.url("order") + "/metrics", timeout=5).text
        assert 'order_confirmations_total{outcome="dead_lettered"} 1.0' in metrics
        assert 'order_confirmations_total{outcome="relayed"} 0.0' in metrics
        state = fetch_state(httpx.Client(headers=INTERNAL), _urls(procs), since)
        assert check_data(None, state)["ok"]  # dead-lettered is an end, and it is counted


def test_order_crashing_between_the_charge_and_its_status_write_loses_nothing(tmp_path):
    """The old reconciler settled such an order paid but never sent its confirmation."""
    env = {**FAST, "REQUEST_BUDGET_SECONDS": "4", "ORDER_SETTLE_AFTER_SECONDS": "5"}
    with running_services(tmp_path, **env) as procs:
        auth = token(procs)
        since = time.time()
        fault(procs, "payment", kind="latency", ms=1200, route="/payments/charge")
        result: dict = {}
        buyer = threading.Thread(target=lambda: result.update(r=checkout(procs, auth, "k-crash")))
        buyer.start()
        db = tmp_path / "data" / "order.db"

        def pending_order() -> str | None:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT id FROM orders WHERE status='pending'").fetchone()
            return row[0] if row else None

        def charge_at_payment() -> bool:
            # The pending row is committed just before the charge is sent: pausing order on the
            # row alone can freeze it before the request leaves (seen once in CI). Payment holds
            # the charge for its 1.2 s latency, so its in-flight gauge shows it arrived.
            text = httpx.get(procs.url("payment") + "/metrics", timeout=5).text
            return any(
                line.startswith("http_requests_in_flight ") and float(line.split()[1]) >= 1
                for line in text.splitlines()
            )

        order_id = wait_until(pending_order, timeout=10, what="the order written, charge in flight")
        wait_until(charge_at_payment, timeout=10, what="the charge arrived at payment")
        procs.pause("order")  # frozen before it can record the answer
        wait_until(
            lambda: httpx.get(
                procs.url("payment") + "/payments",
                params={"order_id": order_id},
                headers=INTERNAL,
                timeout=5,
            ).json(),
            timeout=10,
            what="payment committed the charge",
        )
        procs.crash_and_restart("order")
        buyer.join(30)
        assert result["r"].status_code in (502, 503, 504), result["r"].text  # not a success
        state = settled(procs, since)
        check = check_data(None, state)
        assert check["ok"], check["problems"]
        assert check["orders_by_status"] == {"paid": 1}
        assert check["notifications_by_status"] == {"delivered": 1}
        metrics = httpx.get(procs.url("order") + "/metrics", timeout=5).text
        assert 'orders_reconciled_total{status="paid"} 1.0' in metrics


def test_a_held_charge_past_its_deadline_does_no_work_and_the_order_is_voided(tmp_path):
    """A hang on payment used to charge 20 s later, for an order already marked failed."""
    env = {**FAST, "PAYMENT_TIMEOUT_SECONDS": "0.5", "HTTP_RETRIES": "0"}
    with running_services(tmp_path, **env) as procs:
        auth = token(procs)
        since = time.time()
        fault(procs, "payment", kind="hang", seconds=2, route="/payments/charge")
        r = checkout(procs, auth, uuid.uuid4().hex)
        assert r.status_code == 504 and r.json()["code"] == "payment_pending", r.text
        order_id = r.json()["details"]["order_id"]
        state = settled(procs, since)
        check = check_data(None, state)
        assert check["ok"], check["problems"]
        assert check["orders_by_status"] == {"payment_failed": 1}
        assert check["charges_by_outcome"] == {"voided": 1}

        # The held request comes out after 2 s, past its 0.5 s deadline: refused, no charge.
        def refused() -> bool:
            lines = [json.loads(x) for x in procs.log_file("payment").read_text().splitlines()
                     if x.startswith("{")]  # fmt: skip
            return any(
                x.get("event") == "request" and x.get("route") == "/payments/charge"
                and x.get("status") == 504 for x in lines
            )  # fmt: skip

        wait_until(refused, timeout=10, what="payment refusing the held charge")
        charges = httpx.get(
            procs.url("payment") + "/payments",
            params={"order_id": order_id},
            headers=INTERNAL,
            timeout=5,
        ).json()
        assert [c["outcome"] for c in charges] == ["voided"]


def test_the_data_check_and_the_money_gauge_catch_a_broken_ledger(tmp_path):
    """Break the invariants in the services' own databases: the check and the alert see it."""
    with running_services(tmp_path, **FAST) as procs:
        auth = token(procs)
        since = time.time()
        ids = [checkout(procs, auth, uuid.uuid4().hex).json()["order_id"] for _ in range(3)]
        assert check_data(set(ids), settled(procs, since))["ok"]
        data = tmp_path / "data"
        with sqlite3.connect(data / "order.db") as conn:  # charged, but told failed
            conn.execute("UPDATE orders SET status='payment_failed' WHERE id=?", (ids[0],))
        with sqlite3.connect(data / "notification.db") as conn:  # a lost confirmation
            conn.execute("DELETE FROM notifications WHERE order_id=?", (ids[1],))
        result = check_data(
            set(ids), fetch_state(httpx.Client(headers=INTERNAL), _urls(procs), since)
        )
        assert not result["ok"]
        text = " | ".join(result["problems"])
        assert f"for an order that is not paid (charged, but told failed): {ids[0]}" in text
        assert f"without a delivered or dead-lettered confirmation: {ids[1]}" in text
        assert f"accepted order(s) not paid: {ids[0]}" in text

        def gauge() -> bool:
            metrics = httpx.get(procs.url("order") + "/metrics", timeout=5).text
            return "charges_without_paid_order 1.0" in metrics

        wait_until(gauge, timeout=15, what="order's audit counting the charge")


def _urls(procs) -> dict[str, str]:
    return {n: procs.url(n) for n in procs.names}
