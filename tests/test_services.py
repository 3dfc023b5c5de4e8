"""Each service in process (httpx ASGITransport, lifespan running): behaviour and bad input."""

from __future__ import annotations

import re
import sqlite3
import time

import jwt
import pytest

from tests.support import SERVICE_NAMES, as_shopper, fast_settings, in_process

pytestmark = pytest.mark.anyio

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def settings(tmp_path):
    return fast_settings(tmp_path)


@pytest.fixture
async def shop(settings):
    async with in_process(settings) as clients:
        yield clients


async def token_for(gw, user="alice", password="wonderland") -> str:
    r = await gw.post("/api/login", json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"code", "message", "correlation_id"}, body
    assert body["correlation_id"] == r.headers["x-correlation-id"]
    if code:
        assert body["code"] == code, body
    return body


def db_rows(settings, service: str, sql: str) -> list[tuple]:
    with sqlite3.connect(settings.data_dir / f"{service}.db") as db:
        return db.execute(sql).fetchall()


# --- auth -------------------------------------------------------------------------------


async def test_login_issues_a_verifiable_jwt_with_expiry(shop, settings):
    auth = shop["auth"]
    r = await auth.post("/auth/login", json={"username": "shopper07", "password": "triagelab"})
    assert r.status_code == 200
    token = r.json()["access_token"]
    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"], issuer="triagelab-auth")
    assert claims["sub"] == "shopper07"
    assert claims["exp"] - claims["iat"] == settings.jwt_ttl_seconds
    r = await auth.get("/auth/verify", headers={"Authorization": f"Bearer {token}"})
    assert r.json()["sub"] == "shopper07"


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "nope"), ("mallory", "wonderland"), ("alice", "Wonderland")]
)
async def test_bad_credentials_are_401(shop, user, password):
    r = await shop["auth"].post("/auth/login", json={"username": user, "password": password})
    assert_error(r, 401, "invalid_credentials")


async def test_expired_and_forged_tokens_are_401(shop, settings):
    now = int(time.time())
    expired = jwt.encode(
        {"sub": "alice", "iat": now - 100, "exp": now - 10, "iss": "triagelab-auth"},
        settings.jwt_secret,
        algorithm="HS256",
    )
    forged = jwt.encode(
        {"sub": "alice", "iat": now, "exp": now + 100, "iss": "triagelab-auth"},
        "another-secret-of-sufficient-length-123",
        algorithm="HS256",
    )
    auth = shop["auth"]
    for token, code in [
        (expired, "token_expired"),
        (forged, "invalid_token"),
        ("not.a.jwt", "invalid_token"),
    ]:
        r = await auth.get("/auth/verify", headers={"Authorization": f"Bearer {token}"})
        assert_error(r, 401, code)
    assert_error(await auth.get("/auth/verify"), 401, "missing_token")


# --- payment ----------------------------------------------------------------------------


async def test_same_idempotency_key_never_charges_twice(shop, settings):
    pay = shop["payment"]
    body = {"order_id": "ord_x", "amount_cents": 1290, "currency": "EUR", "card_number": CARD_OK}
    first = await pay.post("/payments/charge", json=body, headers={"Idempotency-Key": "k1"})
    again = await pay.post("/payments/charge", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert db_rows(settings, "payment", "SELECT count(*) FROM charges") == [(1,)]
    other = await pay.post(
        "/payments/charge", json={**body, "amount_cents": 99}, headers={"Idempotency-Key": "k1"}
    )
    assert_error(other, 409, "idempotency_key_reused")
    assert db_rows(settings, "payment", "SELECT count(*) FROM charges") == [(1,)]


async def test_test_cards_decline_with_402_and_replay_the_decline(shop):
    pay = shop["payment"]
    body = {
        "order_id": "ord_y",
        "amount_cents": 500,
        "currency": "EUR",
        "card_number": "4000000000009995",
    }
    for _ in range(2):
        r = await pay.post("/payments/charge", json=body, headers={"Idempotency-Key": "k2"})
        assert_error(r, 402, "card_declined")
    metrics = (await pay.get("/metrics")).text
    assert 'payments_total{outcome="declined"} 1.0' in metrics


async def test_charge_requires_idempotency_key_and_valid_card(shop):
    pay = shop["payment"]
    body = {"order_id": "o", "amount_cents": 5, "currency": "EUR", "card_number": CARD_OK}
    assert_error(await pay.post("/payments/charge", json=body), 422, "validation_error")
    bad = {**body, "card_number": "4242424242424241"}
    r = await pay.post("/payments/charge", json=bad, headers={"Idempotency-Key": "k"})
    assert_error(r, 422, "validation_error")
    assert "4242424242424241" not in r.text  # the rejected card is not echoed back


# --- order and notification ---------------------------------------------------------------


async def test_order_lifecycle_paid_and_failed(shop, settings):
    order = shop["order"]
    ok = await order.post(
        "/orders",
        json={"card_number": CARD_OK, "items": [{"product_id": "sku-mug", "quantity": 3}]},
        headers=as_shopper("alice"),
    )
    assert ok.status_code == 201 and ok.json()["status"] == "paid"
    assert ok.json()["total_cents"] == 3 * 1290
    declined = await order.post(
        "/orders",
        json={"card_number": CARD_DECLINED, "items": [{"product_id": "sku-mug", "quantity": 1}]},
        headers=as_shopper("alice"),
    )
    body = assert_error(declined, 402, "card_declined")
    rows = dict(db_rows(settings, "order", "SELECT id, status FROM orders"))
    assert rows == {ok.json()["order_id"]: "paid", body["details"]["order_id"]: "payment_failed"}
    metrics = (await order.get("/metrics")).text
    assert 'orders_total{payment_method="visa",status="paid"} 1.0' in metrics
    assert 'revenue_cents_total{currency="EUR"} 3870.0' in metrics
    assert "db_pool_checked_out" in metrics and "db_pool_wait_seconds_bucket" in metrics


async def test_notification_is_accepted_once_and_delivered(shop):
    ntf = shop["notification"]
    body = {"order_id": "ord_n1", "recipient": "alice"}
    first = await ntf.post("/notifications", json=body)
    second = await ntf.post("/notifications", json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["notification_id"] == second.json()["notification_id"]
    for _ in range(200):  # bounded poll; the worker is woken at once
        row = (await ntf.get(f"/notifications/{first.json()['notification_id']}")).json()
        if row["status"] == "delivered":
            break
        await __import__("anyio").sleep(0.02)
    assert row["status"] == "delivered"
    metrics = (await ntf.get("/metrics")).text
    assert 'notifications_total{outcome="delivered"} 1.0' in metrics
    assert "notification_queue_depth 0.0" in metrics


async def test_failing_deliveries_are_retried_then_dead_lettered(tmp_path):
    settings = fast_settings(
        tmp_path,
        notification_failure_rate=1.0,
        notification_max_attempts=3,
        notification_retry_base_seconds=0.01,
    )
    async with in_process(settings, names=("notification",)) as c:
        ntf = c["notification"]
        r = await ntf.post("/notifications", json={"order_id": "ord_d", "recipient": "bob"})
        nid = r.json()["notification_id"]
        for _ in range(300):
            row = (await ntf.get(f"/notifications/{nid}")).json()
            if row["status"] != "queued":
                break
            await __import__("anyio").sleep(0.02)
        assert row["status"] == "dead_lettered" and row["attempts"] == 3
        metrics = (await ntf.get("/metrics")).text
        assert 'notifications_total{outcome="retried"} 2.0' in metrics
        assert 'notifications_total{outcome="dead_lettered"} 1.0' in metrics


# --- gateway: the public API and its bad input -------------------------------------------


async def test_checkout_through_the_gateway(shop, settings):
    gw = shop["gateway"]
    token = await token_for(gw)
    products = (await gw.get("/api/products")).json()
    assert {p["id"] for p in products} >= {"sku-mug", "sku-grinder"}
    r = await gw.post(
        "/api/checkout",
        headers={"Authorization": f"Bearer {token}"},
        json={"items": [{"product_id": "sku-kettle", "quantity": 2}], "card_number": CARD_OK},
    )
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["status"] == "paid" and order["notification"] == "queued"
    got = await gw.get(
        f"/api/orders/{order['order_id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert got.json()["items"] == [
        {"product_id": "sku-kettle", "quantity": 2, "unit_price_cents": 5900}
    ]
    # Another user cannot see it.
    bob = await token_for(gw, "bob", "builder")
    r = await gw.get(f"/api/orders/{order['order_id']}", headers={"Authorization": f"Bearer {bob}"})
    assert_error(r, 404, "order_not_found")


BAD_CHECKOUTS = [
    ({"card_number": CARD_OK}, "missing items"),
    ({"items": [], "card_number": CARD_OK}, "empty items"),
    ({"items": [{"product_id": "sku-mug", "quantity": 1}]}, "missing card"),
    ({"items": [{"product_id": "sku-mug", "quantity": 0}], "card_number": CARD_OK}, "zero qty"),
    ({"items": [{"product_id": "sku-mug", "quantity": -3}], "card_number": CARD_OK}, "negative"),
    ({"items": [{"product_id": "sku-mug", "quantity": 10**12}], "card_number": CARD_OK}, "huge"),
    ({"items": [{"product_id": "sku-mug", "quantity": "many"}], "card_number": CARD_OK}, "type"),
    (
        {
            "items": [{"product_id": "sku-mug", "quantity": 1}],
            "card_number": CARD_OK,
            "coupon": "FREE",
        },
        "extra field",
    ),
    ({"items": [{"product_id": "sku-mug", "quantity": 1}], "card_number": "1234"}, "short card"),
    (
        {
            "items": [{"product_id": "sku-mug", "quantity": 1}],
            "card_number": CARD_OK,
            "currency": "USD",
        },
        "currency",
    ),
    (
        {"items": [{"product_id": "sku-mug", "quantity": 1}] * 2, "card_number": CARD_OK},
        "duplicate product",
    ),
]


@pytest.mark.parametrize(("body", "why"), BAD_CHECKOUTS, ids=[w for _, w in BAD_CHECKOUTS])
async def test_bad_checkout_is_422_and_writes_nothing(shop, settings, body, why):
    gw = shop["gateway"]
    token = await token_for(gw)
    r = await gw.post("/api/checkout", json=body, headers={"Authorization": f"Bearer {token}"})
    assert_error(r, 422)
    assert db_rows(settings, "order", "SELECT count(*) FROM orders") == [(0,)]
    assert db_rows(settings, "payment", "SELECT count(*) FROM charges") == [(0,)]


async def test_unknown_product_is_422_and_writes_nothing(shop, settings):
    gw = shop["gateway"]
    token = await token_for(gw)
    r = await gw.post(
        "/api/checkout",
        headers={"Authorization": f"Bearer {token}"},
        json={"items": [{"product_id": "sku-unicorn", "quantity": 1}], "card_number": CARD_OK},
    )
    assert_error(r, 422, "unknown_product")
    assert db_rows(settings, "order", "SELECT count(*) FROM orders") == [(0,)]


async def test_malformed_json_oversized_body_and_bad_tokens(shop, settings):
    gw = shop["gateway"]
    token = await token_for(gw)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    assert_error(await gw.post("/api/checkout", content=b"{not json", headers=auth), 422)
    huge = b'{"items": [' + b'{"product_id": "sku-mug", "quantity": 1},' * 5000 + b"]}"
    assert_error(await gw.post("/api/checkout", content=huge, headers=auth), 413, "body_too_large")

    async def chunks():
        for _ in range(100):
            yield b" " * 1024

    r = await gw.post("/api/checkout", content=chunks(), headers=auth)
    assert_error(r, 413, "body_too_large")
    ok_body = {"items": [{"product_id": "sku-mug", "quantity": 1}], "card_number": CARD_OK}
    for header in ["Bearer garbage", "Basic YWxpY2U6d29uZGVybGFuZA==", f"Bearer {token}x", None]:
        headers = {"Authorization": header} if header else {}
        r = await gw.post("/api/checkout", json=ok_body, headers=headers)
        assert r.status_code == 401, r.text
        assert_error(r, 401)
    assert db_rows(settings, "order", "SELECT count(*) FROM orders") == [(0,)]


async def test_unknown_route_and_method_use_the_error_model(shop):
    gw = shop["gateway"]
    assert_error(await gw.get("/api/nope"), 404, "not_found")
    assert_error(await gw.delete("/api/products"), 405, "method_not_allowed")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_api_docs_load_no_asset_from_outside(shop, page):
    """Swagger UI and ReDoc work offline: every script, style and icon the page loads is served
    by the service itself (FastAPI's default pages take them from a CDN)."""
    for name in SERVICE_NAMES:
        client = shop[name]
        r = await client.get(page)
        assert r.status_code == 200, (name, r.text)
        assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', r.text)
        assert any(a.endswith(".js") for a in assets), (name, assets)
        assert not [a for a in assets if "//" in a], f"{name}{page} loads from outside: {assets}"
        for asset in assets:
            got = await client.get(asset)
            assert got.status_code == 200 and got.content, (name, asset, got.status_code)
        spec = await client.get("/openapi.json")
        assert spec.status_code == 200 and spec.json()["paths"], name


async def test_payment_outage_fails_checkout_cleanly(shop, settings):
    gw = shop["gateway"]
    token = await token_for(gw)
    # Take payment away: its transport now refuses connections.
    import httpx

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    order_kit = shop["_apps"]["order"].state.kit
    await order_kit.clients["payment"].aclose() if "payment" in order_kit.clients else None
    order_kit.clients.pop("payment", None)
    order_kit.transports["payment"] = httpx.MockTransport(refuse)
    r = await gw.post(
        "/api/checkout",
        headers={"Authorization": f"Bearer {token}"},
        json={"items": [{"product_id": "sku-mug", "quantity": 1}], "card_number": CARD_OK},
    )
    body = assert_error(r, 503, "upstream_unavailable")
    assert db_rows(settings, "order", "SELECT status FROM orders") == [("payment_failed",)]
    assert db_rows(settings, "payment", "SELECT count(*) FROM charges") == [(0,)]
    assert "payment" in body["message"]


async def test_notification_outage_does_not_fail_checkout(shop, settings):
    """The confirmation waits in order's outbox and is relayed once notification answers."""
    import httpx

    gw = shop["gateway"]
    token = await token_for(gw)
    order_kit = shop["_apps"]["order"].state.kit
    real = order_kit.transports["notification"]
    calls = {"n": 0}

    async def flaky(request):
        calls["n"] += 1
        if calls["n"] <= 3:  # the first relay attempt and its two retries fail
            raise httpx.ConnectError("down", request=request)
        return await real.handle_async_request(request)

    order_kit.clients.pop("notification", None)
    order_kit.transports["notification"] = httpx.MockTransport(flaky)
    r = await gw.post(
        "/api/checkout",
        headers={"Authorization": f"Bearer {token}"},
        json={"items": [{"product_id": "sku-mug", "quantity": 1}], "card_number": CARD_OK},
    )
    assert r.status_code == 201 and r.json()["notification"] == "queued"
    order_id = r.json()["order_id"]
    ntf = shop["notification"]
    for _ in range(300):  # the outbox relay retries until notification accepts it
        rows = (await ntf.get("/notifications", params={"order_id": order_id})).json()
        if rows:
            break
        await __import__("anyio").sleep(0.02)
    assert rows and rows[0]["order_id"] == order_id
    assert calls["n"] >= 4
    outbox: list = []
    for _ in range(300):  # the relay records the delivery just after notification accepted it
        outbox = db_rows(settings, "order", "SELECT status, attempts FROM outbox")
        if outbox and outbox[0][0] == "delivered":
            break
        await __import__("anyio").sleep(0.02)
    assert outbox == [("delivered", 2)]


async def test_error_series_exist_at_zero_before_any_traffic(shop):
    metrics = (await shop["gateway"].get("/metrics")).text
    for status in ("201", "500"):
        line = f'http_requests_total{{method="POST",route="/api/checkout",status="{status}"}} 0.0'
        assert line in metrics
    assert 'http_request_duration_seconds_bucket{le="0.5",method="POST",route="/api/checkout"}' in (
        metrics
    )
    assert "/healthz" not in metrics and "/metrics" not in metrics
