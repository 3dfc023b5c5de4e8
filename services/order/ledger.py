"""Where an order's money is decided: the charge, its settlement, the reconciler and the audit.

Rules (docs/architecture.md, "Money and messages"):
- Only a definitive answer from payment settles an order: 201 (paid), 402 or another 4xx
  (payment_failed). A timeout or a 5xx is an unknown outcome: the order becomes
  `payment_unknown`, never `payment_failed` on a guess.
- Settling is a conditional update (only from a non-terminal state), so the request, a retry
  and the reconciler can race and the first answer wins; `paid` writes the confirmation to the
  outbox in the same transaction.
- The reconciler settles unknown orders (and orders left pending by a crash) by asking payment
  to resolve the key: the charge made under it, or a void that forbids a late one.
- The audit compares payment's approved charges with the orders: a charge without a paid order
  of the same amount is exported as `charges_without_paid_order` (the money alert).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from opentelemetry.instrumentation.utils import suppress_instrumentation
from prometheus_client import Counter, Gauge
from sqlalchemy import and_, func, or_, select, update

from services.kit import DownstreamError, Kit, ServiceError
from services.kit.checkout import NETWORKS

from .models import NONTERMINAL, STATUSES, Order
from .outbox import Relay

AUDIT_LOOKBACK_SECONDS = 3600.0  # on start: charges of the last hour are checked again
AUDIT_OVERLAP_SECONDS = 30.0  # a charge committed late is still seen
AUDIT_PAGE = 5000
RECONCILE_BATCH = 200
DECLINED = "card_declined"


class Ledger:
    def __init__(self, kit: Kit, relay: Relay) -> None:
        self.kit = kit
        self.relay = relay
        r = kit.metrics.registry
        self.orders = Counter(
            "orders", "Orders by status reached.", ["status", "payment_method"], registry=r
        )
        for status in STATUSES:
            for network in NETWORKS:
                self.orders.labels(status, network)
        self.revenue = Counter(
            "revenue_cents", "Revenue of paid orders, in cents.", ["currency"], registry=r
        )
        self.revenue.labels("EUR")
        self.reconciled = Counter(
            "orders_reconciled", "Orders settled by the reconciler, by result.", ["status"],
            registry=r,
        )  # fmt: skip
        for status in ("paid", "payment_failed"):
            self.reconciled.labels(status)
        self.unsettled = Gauge("orders_unsettled", "Orders not yet paid or failed.", registry=r)
        self.oldest = Gauge(
            "orders_unsettled_oldest_age_seconds",
            "Age of the oldest order not yet paid or failed.",
            registry=r,
        )
        self.mismatched = Gauge(
            "charges_without_paid_order",
            "Approved charges whose order is not paid, or not for that amount (the audit's count).",
            registry=r,
        )
        self.audit_after = time.time() - AUDIT_LOOKBACK_SECONDS
        self.candidates: dict[str, dict] = {}  # payment id -> charge, until its order is paid
        self.reported: set[str] = set()  # mismatches already logged (once each)
        self.last_audit = float("-inf")

    # ------------------------------------------------------------------ the request path

    async def charge(self, order: Order, card_number: str) -> None:
        """Charge `order` (idempotency key = order id) and settle it; raise what the caller gets."""
        try:
            response = await self.kit.client("payment").request(
                "POST",
                "/payments/charge",
                json={
                    "order_id": order.id,
                    "amount_cents": order.total_cents,
                    "currency": order.currency,
                    "card_number": card_number,
                },
                headers={"Idempotency-Key": order.id},
            )
        except DownstreamError as exc:
            if exc.maybe_processed:
                await self.mark_unknown(order, exc.code)
            else:  # the request never reached payment: nothing can have been charged
                await self.settle(order, "payment_failed", exc.code)
            if order.status == "payment_failed" and order.failure_code == exc.code:
                exc.details = {**(exc.details or {}), "order_id": order.id}
                raise
            raise self.answer_error(order, pending_status=exc.status) from exc
        body = response.json()
        if response.status_code == 201:
            await self.settle(order, "paid", None)
        else:  # 402 declined, 409 voided, 422 ...: payment said no, definitively
            await self.settle(order, "payment_failed", body.get("code", "payment_rejected"))
        if order.status != "paid":
            raise self.answer_error(order)

    def answer_error(
        self, order: Order, pending_status: int = 504, headers: dict | None = None
    ) -> ServiceError:
        """What a shopper is told about an order that is not paid (first answer or replay)."""
        details = {"order_id": order.id, "status": order.status}
        if order.status == "payment_failed":
            if order.failure_code == DECLINED:
                return ServiceError(402, DECLINED, "card declined", details, headers)
            return ServiceError(
                502,
                "payment_failed",
                f"the payment did not go through ({order.failure_code})",
                details,
                headers,
            )
        return ServiceError(
            pending_status,
            "payment_pending",
            "the payment's outcome is not known yet; the order will be settled shortly: retry "
            "with the same Idempotency-Key to learn it",
            details,
            headers,
        )

    async def mark_unknown(self, order: Order, reason: str) -> None:
        async with self.kit.database.session() as s:
            result = await s.execute(
                update(Order)
                .where(Order.id == order.id, Order.status == "pending")
                .values(status="payment_unknown", failure_code=reason, updated_at=time.time())
            )
            await s.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            order.status, order.failure_code = "payment_unknown", reason
            self.orders.labels("payment_unknown", order.payment_method).inc()
            self.kit.log.warning(
                "order_payment_unknown",
                order_id=order.id,
                reason=reason,
                payment_method=order.payment_method,
            )
        else:
            await self._refresh(order)

    async def settle(self, order: Order, status: str, failure: str | None) -> bool:
        """Move `order` to paid/payment_failed unless another path settled it first (then
        `order` is refreshed to that answer). Returns whether this call settled it."""
        now = time.time()
        message = self.relay.message(order) if status == "paid" else None
        async with self.kit.database.session() as s:
            result = await s.execute(
                update(Order)
                .where(Order.id == order.id, Order.status.in_(NONTERMINAL))
                .values(status=status, failure_code=failure, updated_at=now)
            )
            won = result.rowcount == 1  # type: ignore[attr-defined]
            if won and message is not None:
                s.add(message)
            await s.commit()
        if not won:
            await self._refresh(order)
            return False
        order.status, order.failure_code, order.updated_at = status, failure, now
        self.orders.labels(status, order.payment_method).inc()
        if message is not None:
            self.revenue.labels(order.currency).inc(order.total_cents)
            self.relay.written(message)
        self.kit.log.info(
            "order_" + status,
            order_id=order.id,
            failure_code=failure,
            payment_method=order.payment_method,
        )
        return True

    async def _refresh(self, order: Order) -> None:
        async with self.kit.database.session() as s:
            row = (
                await s.execute(
                    select(Order.status, Order.failure_code).where(Order.id == order.id)
                )
            ).one()
        order.status, order.failure_code = row.status, row.failure_code

    # ------------------------------------------------------------------ the worker

    async def run(self, beat: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self.kit.settings.order_reconcile_seconds)
            try:
                if settled := await self.reconcile():
                    self.kit.log.warning("orders_reconciled", count=settled)
                await self.measure()
                if time.monotonic() - self.last_audit >= self.kit.settings.order_audit_seconds:
                    await self.audit()
                    self.last_audit = time.monotonic()
                beat()
            except ServiceError as exc:  # payment down, pool exhausted: the next round retries
                self.kit.log.warning("reconcile_deferred", code=exc.code)

    async def reconcile(self) -> int:
        """Settle unknown orders, and pending ones whose request is over, by asking payment."""
        cutoff = time.time() - self.kit.settings.order_settle_after_seconds
        with suppress_instrumentation():  # the poll is not a trace; a settlement is (below)
            stale = await self._stale(cutoff)
        settled = 0
        for order in stale:
            response = await self.kit.client("payment").request(
                "POST",
                "/payments/resolve",
                json={
                    "idempotency_key": order.id,
                    "order_id": order.id,
                    "currency": order.currency,
                },
                headers={"Idempotency-Key": "resolve-" + order.id},  # safe to retry
            )
            if response.status_code != 200:
                self.kit.log.error(
                    "resolve_refused", order_id=order.id, status=response.status_code
                )
                continue
            outcome = response.json()["outcome"]
            if outcome == "approved":
                won = await self.settle(order, "paid", None)
            else:
                failure = DECLINED if outcome == "declined" else "payment_" + outcome
                won = await self.settle(order, "payment_failed", failure)
            if won:
                self.reconciled.labels(order.status).inc()
                settled += 1
        return settled

    async def _stale(self, cutoff: float) -> list[Order]:
        async with self.kit.database.session() as s:
            return list(
                await s.scalars(
                    select(Order)
                    .where(
                        or_(
                            Order.status == "payment_unknown",
                            and_(Order.status == "pending", Order.created_at < cutoff),
                        )
                    )
                    .order_by(Order.created_at)
                    .limit(RECONCILE_BATCH)
                )
            )

    async def measure(self) -> None:
        with suppress_instrumentation():
            await self._measure()

    async def _measure(self) -> None:
        async with self.kit.database.session() as s:
            count, oldest = (
                await s.execute(
                    select(func.count(), func.min(Order.created_at)).where(
                        Order.status.in_(NONTERMINAL)
                    )
                )
            ).one()
        self.unsettled.set(count)
        self.oldest.set(time.time() - oldest if oldest else 0.0)

    async def audit(self) -> None:
        """Approved charges (paged forward from a watermark) against the orders they paid for."""
        response = await self.kit.client("payment").request(
            "GET",
            "/payments",
            params={
                "outcome": "approved",
                "created_after": self.audit_after - AUDIT_OVERLAP_SECONDS,
                "limit": AUDIT_PAGE,
            },
        )
        charges = response.json()
        for charge in charges:
            self.candidates[charge["payment_id"]] = charge
        if charges:
            self.audit_after = max(self.audit_after, charges[-1]["created_at"])
        orders: dict[str, tuple[str, int, str]] = {}
        ids = list({c["order_id"] for c in self.candidates.values()})
        async with self.kit.database.session() as s:
            for i in range(0, len(ids), 500):
                rows = await s.execute(
                    select(Order.id, Order.status, Order.total_cents, Order.currency).where(
                        Order.id.in_(ids[i : i + 500])
                    )
                )
                orders.update({r.id: (r.status, r.total_cents, r.currency) for r in rows})
        mismatched = 0
        for payment_id, charge in list(self.candidates.items()):
            status, total, currency = orders.get(charge["order_id"], ("missing", 0, ""))
            if status in NONTERMINAL:
                continue  # the reconciler settles it; look again next time
            if (status, total, currency) == ("paid", charge["amount_cents"], charge["currency"]):
                del self.candidates[payment_id]
                self.reported.discard(payment_id)
                continue
            mismatched += 1
            if payment_id not in self.reported:
                self.reported.add(payment_id)
                self.kit.log.error(
                    "charge_without_paid_order",
                    payment_id=payment_id,
                    order_id=charge["order_id"],
                    order_status=status,
                    amount_cents=charge["amount_cents"],
                )
        self.mismatched.set(mismatched)
