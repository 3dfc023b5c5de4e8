"""The post-drill data check: what the services hold must add up, whatever fault ran.

Invariants (docs/drills.md, "The data check"); each has a test that breaks it on purpose:

1. every approved charge belongs to exactly one order, that order is paid, and the amounts and
   currencies agree (no card charged for an order reported failed, none charged twice);
2. every paid order has exactly one approved charge (nothing given away);
3. every paid order has its confirmation delivered or dead-lettered (in notification, or
   dead-lettered in order's outbox);
4. one idempotency key (per shopper) -> at most one order;
5. nothing non-terminal (order pending or payment_unknown, confirmation waiting, notification
   queued) once the settle bound has passed;
6. every checkout the gateway answered 201 for exists and is paid.

`fetch_state` reads the services' own APIs; `check_data` is pure (unit-tested on crafted data).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

NONTERMINAL_ORDERS = ("pending", "payment_unknown")
CONFIRMED = ("delivered", "dead_lettered")
LIMIT = 10_000
SHOW = 5  # ids shown per problem


def parse_ts(text: str) -> float:
    """Prometheus' RFC 3339 (nanoseconds allowed) or a log's ISO 8601 stamp, as unix seconds."""
    text = text.replace("Z", "+00:00")
    main, sep, rest = text.partition(".")
    if sep:  # Python's parser takes at most 6 fractional digits
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits) :]
        text = f"{main}.{digits[:6]}{tz}"
    return datetime.fromisoformat(text).timestamp()


def accepted_orders(gateway_log: Path, since: float) -> set[str] | None:
    """Order ids the gateway answered 201 for (its ``checkout_completed`` log lines)."""
    if not gateway_log.exists():
        return None
    found = set()
    with gateway_log.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if "checkout_completed" not in line:
                continue
            try:
                record = json.loads(line)
                if record.get("event") != "checkout_completed":
                    continue
                if parse_ts(record["timestamp"]) >= since - 1:
                    found.add(record["order_id"])
            except (ValueError, KeyError, TypeError):
                continue
    return found


def checked_out(checkouts_file: Path, since: float) -> set[str] | None:
    """Order ids the drill's shoppers were answered 201 for (Locust's LOCUST_CHECKOUTS_FILE)."""
    if not checkouts_file.exists():
        return None
    found = set()
    with checkouts_file.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                if float(record["ts"]) >= since - 1:
                    found.add(str(record["order_id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a stopped Locust
    return found


def fetch_state(http: httpx.Client, urls: dict[str, str], since: float) -> dict[str, list[dict]]:
    """Orders, confirmations, notifications and charges made since `since`, from the services.

    Their routes are internal: `http` must send the lab's service credential (X-Internal-Token).

    A charge whose order is older than `since` is looked up by id, so no charge is left
    unmatched only because of where the window starts."""
    after = {"created_after": since - 1, "limit": LIMIT}
    orders = http.get(f"{urls['order']}/orders", params=after).json()
    outbox = http.get(f"{urls['order']}/outbox", params=after).json()
    charges = http.get(f"{urls['payment']}/payments", params=after).json()
    notes = [
        n
        for n in http.get(f"{urls['notification']}/notifications", params={"limit": LIMIT}).json()
        if n["created_at"] >= since - 1
    ]
    known = {o["order_id"] for o in orders}
    for order_id in sorted({c["order_id"] for c in charges} - known)[:100]:
        response = http.get(f"{urls['order']}/orders/{order_id}")
        if response.status_code == 200:
            orders.append(response.json())
    return {"orders": orders, "outbox": outbox, "notifications": notes, "charges": charges}


def unsettled(state: dict[str, list[dict]]) -> int:
    """How many things are still on their way (the data check waits for 0, with a deadline)."""
    return (
        sum(o["status"] in NONTERMINAL_ORDERS for o in state["orders"])
        + sum(m["status"] == "pending" for m in state["outbox"])
        + sum(n["status"] == "queued" for n in state["notifications"])
    )


def wait_and_fetch(
    http: httpx.Client,
    urls: dict[str, str],
    since: float,
    timeout: float,
    pause: Callable[[float], None],
    poll_seconds: float = 2.0,
) -> dict[str, list[dict]]:
    """Fetch until nothing is on its way or `timeout` passes (bounded: count and clock)."""
    deadline = time.monotonic() + timeout
    state = fetch_state(http, urls, since)
    for _ in range(int(timeout / poll_seconds) + 2):
        if not unsettled(state) or time.monotonic() > deadline:
            break
        pause(poll_seconds)
        state = fetch_state(http, urls, since)
    return state


def _ids(ids: list[str]) -> str:
    return ", ".join(sorted(ids)[:SHOW])


def check_data(accepted: set[str] | None, state: dict[str, list[dict]]) -> dict[str, Any]:
    """The verdict, with counts for the report (pure)."""
    orders, charges = state["orders"], state["charges"]
    problems: list[str] = []

    def problem(ids: list[str], what: str) -> None:
        if ids:
            problems.append(f"{len(ids)} {what}: {_ids(ids)}")

    by_id = {o["order_id"]: o for o in orders}
    approved: dict[str, list[dict]] = {}
    for charge in charges:
        if charge["outcome"] == "approved":
            approved.setdefault(charge["order_id"], []).append(charge)

    # 1. approved charge <-> one paid order with the same amount and currency
    problem([i for i, c in approved.items() if len(c) > 1], "order(s) charged twice")
    problem([i for i in approved if i not in by_id], "approved charge(s) without an order")
    problem(
        [i for i in approved if i in by_id and by_id[i]["status"] != "paid"],
        "approved charge(s) for an order that is not paid (charged, but told failed)",
    )
    problem(
        [
            i
            for i, cs in approved.items()
            if i in by_id
            and any(
                (c["amount_cents"], c["currency"])
                != (by_id[i]["total_cents"], by_id[i]["currency"])
                for c in cs
            )
        ],
        "charge(s) of another amount or currency than the order",
    )
    # 2. paid order -> an approved charge
    paid = [o["order_id"] for o in orders if o["status"] == "paid"]
    problem([i for i in paid if i not in approved], "paid order(s) without an approved charge")
    # 3. paid order -> confirmation delivered or dead-lettered
    confirmed = {n["order_id"] for n in state["notifications"] if n["status"] in CONFIRMED}
    confirmed |= {m["order_id"] for m in state["outbox"] if m["status"] == "dead_lettered"}
    problem(
        [i for i in paid if i not in confirmed],
        "paid order(s) without a delivered or dead-lettered confirmation",
    )
    # 4. one idempotency key -> at most one order
    keys = Counter(
        (o["user"], o["idempotency_key"]) for o in orders if o.get("idempotency_key") is not None
    )
    problem([k for (_, k), n in keys.items() if n > 1], "idempotency key(s) with several orders")
    # 5. nothing left on its way
    problem(
        [o["order_id"] for o in orders if o["status"] in NONTERMINAL_ORDERS],
        "order(s) still unsettled (pending or payment_unknown)",
    )
    problem(
        [m["order_id"] for m in state["outbox"] if m["status"] == "pending"],
        "confirmation(s) still in order's outbox",
    )
    problem(
        [n["order_id"] for n in state["notifications"] if n["status"] == "queued"],
        "notification(s) still queued",
    )
    # 6. what the shopper was told succeeded did
    if accepted is not None:
        problem(sorted(accepted - set(by_id)), "accepted order(s) missing")
        problem(
            [i for i in accepted if i in by_id and by_id[i]["status"] != "paid"],
            "accepted order(s) not paid",
        )
    return {
        "ok": not problems,
        "problems": problems,
        "accepted_orders": None if accepted is None else len(accepted),
        "orders": len(orders),
        "orders_by_status": dict(Counter(o["status"] for o in orders)),
        "charges_by_outcome": dict(Counter(c["outcome"] for c in charges)),
        "outbox_by_status": dict(Counter(m["status"] for m in state["outbox"])),
        "notifications_by_status": dict(Counter(n["status"] for n in state["notifications"])),
    }
