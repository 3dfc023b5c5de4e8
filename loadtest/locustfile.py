"""Shopper traffic for TriageLab: browse, log in, check out, look up the order.

Run from the repository root (see docs/loadtest.md)::

    uv run locust -f loadtest/locustfile.py --host http://127.0.0.1:8000
    uv run locust -f loadtest/locustfile.py,loadtest/shapes/spike.py --headless

Requests are named by route template (``/api/orders/{order_id}``) so Locust's stats, the
Prometheus exporter and the services' own ``route`` label line up one to one. A small share of
checkouts use a test card that the payment service declines: that 402 is the correct business
answer, so it counts as a success in Locust and as ``outcome="declined"`` in the exporter;
a declined card that is *accepted*, or a good card that is declined, is a failure.

Each purchase carries an ``Idempotency-Key`` of its own. A checkout that fails with a 5xx, a 409
(still in progress) or no answer at all is re-sent with the same key, up to
``LOCUST_CHECKOUT_RETRIES`` times after a short jittered pause, the way a careful client does:
the shop replays the first answer instead of selling twice.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
import uuid
from collections import Counter, deque
from typing import Any

from locust import FastHttpUser, between, events, task

from loadtest import prometheus_exporter
from loadtest.config import APPROVED_CARDS, DECLINED_CARDS, LoadSettings

SETTINGS = LoadSettings.from_env()
log = logging.getLogger("triagelab.loadtest")

LOGIN = "/api/login"
PRODUCTS = "/api/products"
CHECKOUT = "/api/checkout"
ORDER = "/api/orders/{order_id}"

METRICS = prometheus_exporter.install(events)
for _method, _name in (("POST", LOGIN), ("GET", PRODUCTS), ("GET", ORDER)):
    METRICS.declare(_method, _name)
METRICS.declare("POST", CHECKOUT, prometheus_exporter.OUTCOMES)

# Round-robin over the pool so that N users log in as N distinct shoppers (random picks would
# pile several users onto one account and leave others idle).
_next_user = itertools.count()
# Checkout results of this process, logged when Locust stops (declines are successes in
# Locust's own stats, so they are counted here).
JOURNEY: Counter[str] = Counter()
# The shopper's own record of what the shop accepted (LOCUST_CHECKOUTS_FILE): a drill against a
# lab known only by its URLs has no gateway log to read it from (labctl.drills.data_check).
_CHECKOUTS = (
    open(SETTINGS.checkouts_file, "a", encoding="utf-8") if SETTINGS.checkouts_file else None
)


def _record_checkout(order_id: str) -> None:
    if _CHECKOUTS is not None:
        _CHECKOUTS.write(json.dumps({"ts": time.time(), "order_id": order_id}) + "\n")
        _CHECKOUTS.flush()


class Shopper(FastHttpUser):
    """A shopper who mostly browses, sometimes buys, and checks on recent orders."""

    host = "http://127.0.0.1:8000"
    wait_time = between(SETTINGS.wait_min, SETTINGS.wait_max)
    network_timeout = SETTINGS.timeout
    connection_timeout = SETTINGS.timeout

    def on_start(self) -> None:
        username, password = SETTINGS.users[next(_next_user) % len(SETTINGS.users)]
        self.username = username
        self.password = password
        self.auth: dict[str, str] | None = None
        self.token_expires = 0.0
        self.login_failures = 0
        self.next_login = 0.0
        self.product_ids: list[Any] = []
        self.orders: deque[Any] = deque(maxlen=20)
        self.login()
        self.browse()

    def login(self) -> bool:
        body = {"username": self.username, "password": self.password}
        with self.client.post(LOGIN, json=body, name=LOGIN, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"login returned {resp.status_code}")
                return self._login_failed()
            try:
                data = resp.json()
                token = data["access_token"]
            except (ValueError, KeyError, TypeError):
                resp.failure("login response has no access_token")
                return self._login_failed()
        self.login_failures = 0
        self.auth = {"Authorization": f"Bearer {token}"}
        expires_in = data.get("expires_in") if isinstance(data, dict) else None
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 900.0
        # Log in again a little before the token expires, like a well-behaved client.
        self.token_expires = time.monotonic() + max(lifetime - 30.0, lifetime / 2)
        return True

    def _login_failed(self) -> bool:
        """Back off (1, 2, 4 … 30 s, jittered) so an auth outage is not met with a login storm."""
        self.auth = None
        self.login_failures += 1
        delay = min(30.0, 2.0 ** (self.login_failures - 1)) * random.uniform(0.5, 1.0)
        self.next_login = time.monotonic() + delay
        return False

    def logged_in(self) -> bool:
        """Whether a valid token is at hand, logging in when due; False while backing off."""
        now = time.monotonic()
        if self.auth is not None and now < self.token_expires:
            return True
        if now < self.next_login:
            return False
        return self.login()

    @task(6)
    def browse(self) -> None:
        with self.client.get(PRODUCTS, name=PRODUCTS, catch_response=True) as resp:
            if resp.status_code != 200:
                return  # default: a non-2xx is a failure
            try:
                products = resp.json()
                ids = [p["id"] for p in products]
            except (ValueError, KeyError, TypeError):
                resp.failure("products response is not a list of products")
                return
            if not ids:
                resp.failure("product catalogue is empty")
                return
        self.product_ids = ids

    @task(2)
    def checkout(self) -> None:
        if not self.product_ids or not self.logged_in():
            return
        declined = random.random() < SETTINGS.decline_rate
        if declined:
            card = random.choice(DECLINED_CARDS)
        else:
            card = random.choices(list(APPROVED_CARDS), weights=APPROVED_CARDS.values())[0]
        count = random.randint(1, min(SETTINGS.max_items, len(self.product_ids)))
        items = [
            {"product_id": pid, "quantity": random.randint(1, 2)}
            for pid in random.sample(self.product_ids, count)
        ]
        body = {"items": items, "card_number": card, "currency": SETTINGS.currency}
        headers = {**self.auth, "Idempotency-Key": uuid.uuid4().hex}
        context = {"expect": "declined" if declined else "approved"}
        for attempt in range(1 + SETTINGS.checkout_retries):
            if attempt:
                JOURNEY["retried"] += 1
                time.sleep(random.uniform(0.5, 1.5) * attempt)  # gevent-patched: yields
            outcome = self._checkout_once(body, headers, context, declined)
            if outcome != "retry":
                return
        JOURNEY["error"] += 1

    def _checkout_once(self, body: dict, headers: dict, context: dict, declined: bool) -> str:
        """One attempt: "done", or "retry" when the answer does not settle the purchase."""
        with self.client.post(
            CHECKOUT,
            json=body,
            headers=headers,
            name=CHECKOUT,
            context=context,
            catch_response=True,
        ) as resp:
            status = resp.status_code
            if status == 401:
                self.auth = None  # log in again on the next checkout or order lookup
                JOURNEY["unauthorized"] += 1
                return "done"  # stays a failure
            if status == 0 or status >= 500 or status == 409:
                return "retry"  # Locust already marks a 5xx or no answer failed
            if declined:
                if status == 402:
                    resp.success()
                    JOURNEY["declined"] += 1
                else:
                    JOURNEY["unexpected"] += 1
                    resp.failure(f"declined test card got {status}, expected 402")
                return "done"
            if status == 402:
                JOURNEY["unexpected"] += 1
                resp.failure("approved test card was declined")
                return "done"
            if status != 201:
                JOURNEY["error"] += 1
                return "done"
            try:
                order_id = resp.json()["order_id"]
            except (ValueError, KeyError, TypeError):
                JOURNEY["error"] += 1
                resp.failure("checkout response has no order_id")
                return "done"
            JOURNEY["approved"] += 1
        _record_checkout(order_id)
        self.orders.append(order_id)
        return "done"

    @task(2)
    def order_status(self) -> None:
        if not self.orders:
            self.browse()  # nothing bought yet: keep the shopper busy the cheap way
            return
        if not self.logged_in():
            return
        order_id = random.choice(self.orders)
        with self.client.get(
            f"/api/orders/{order_id}", headers=self.auth, name=ORDER, catch_response=True
        ) as resp:
            if resp.status_code == 401:
                self.auth = None


@events.quitting.add_listener
def _log_journey(environment: Any, **_: Any) -> None:
    """Print how checkouts ended; declines do not show up as failures in Locust's table."""
    if JOURNEY:
        summary = ", ".join(f"{k}={v}" for k, v in sorted(JOURNEY.items()))
        log.info("checkout outcomes: %s", summary)
