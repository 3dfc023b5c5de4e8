"""The transactional outbox: confirmations written with the paid status, relayed to notification.

A confirmation row is inserted in the same transaction that marks its order paid (ledger.py), so
a paid order always has one, whatever crashes next. This relay delivers the rows to
notification (which de-duplicates by order id, so a repeated delivery is harmless), retries
with backoff through any outage, and dead-letters only a refusal (a 4xx) or a confirmation that
stayed undeliverable for OUTBOX_GIVE_UP_SECONDS. Nothing is kept only in memory.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable

from opentelemetry import propagate, trace
from prometheus_client import Counter
from sqlalchemy import update

from services.kit import DownstreamError, Kit, queue
from services.kit.context import correlation_id_var

from .models import Order, OutboxMessage

RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# A 4xx that means "not now" rather than "never": retried like an outage.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


class Relay:
    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.wake = asyncio.Event()
        r = kit.metrics.registry
        self.outcomes = Counter(
            "order_confirmations", "Confirmations relayed to notification.", ["outcome"], registry=r
        )
        for outcome in ("written", "relayed", "retried", "dead_lettered"):
            self.outcomes.labels(outcome)
        self.backlog = queue.Backlog(
            r,
            ("order_outbox_depth", "Confirmations waiting to be relayed."),
            ("order_outbox_oldest_age_seconds", "Age of the oldest confirmation waiting."),
        )

    def message(self, order: Order) -> OutboxMessage:
        """The row to add to the transaction that marks `order` paid."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the relay's span joins the checkout's trace
        now = time.time()
        return OutboxMessage(
            id="obx_" + uuid.uuid4().hex[:20],
            order_id=order.id,
            recipient=order.user,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            traceparent=carrier.get("traceparent"),
            correlation_id=correlation_id_var.get() or None,
        )

    def written(self, message: OutboxMessage) -> None:
        """Called once the transaction holding `message` committed."""
        self.backlog.add(message.id, message.created_at)
        self.outcomes.labels("written").inc()
        self.wake.set()

    async def load(self) -> None:
        await self.backlog.load(self.kit.database, OutboxMessage, "pending")

    async def run(self, beat: Callable[[], None]) -> None:
        await queue.serve(
            self.wake,
            lambda: self.kit.settings.outbox_poll_seconds,
            lambda: queue.due_rows(self.kit.database, OutboxMessage, "pending"),
            self.deliver,
            beat,
        )

    async def deliver(self, m: OutboxMessage) -> None:
        kit = self.kit
        parent = propagate.extract({"traceparent": m.traceparent}) if m.traceparent else None
        # The checkout's trace and correlation id follow the confirmation into notification.
        correlation_id_var.set(m.correlation_id or "")
        with kit.tracer.start_as_current_span(
            "relay confirmation",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes={"order.id": m.order_id, "outbox.attempt": m.attempts + 1},
        ) as span:
            error, permanent = await self._post(m)
            now, attempts = time.time(), m.attempts + 1
            if error is None:
                values: dict = {"status": "delivered", "attempts": attempts, "delivered_at": now}
                outcome = "relayed"
            elif permanent or now - m.created_at > kit.settings.outbox_give_up_seconds:
                values = {"status": "dead_lettered", "attempts": attempts, "last_error": error}
                outcome = "dead_lettered"
            else:
                backoff = min(RETRY_BASE_SECONDS * 2 ** (attempts - 1), RETRY_MAX_SECONDS)
                values = {
                    "attempts": attempts,
                    "last_error": error,
                    "next_attempt_at": now + random.uniform(0.5, 1.0) * backoff,
                }
                outcome = "retried"
            if error is not None:
                span.set_status(trace.StatusCode.ERROR, error)
            async with kit.database.session() as s:
                await s.execute(
                    update(OutboxMessage).where(OutboxMessage.id == m.id).values(**values)
                )
                await s.commit()
        if outcome != "retried":
            self.backlog.done(m.id)
        self.outcomes.labels(outcome).inc()
        log = kit.log.info if error is None else kit.log.warning
        log("confirmation_" + outcome, order_id=m.order_id, attempt=attempts, error=error)

    async def _post(self, m: OutboxMessage) -> tuple[str | None, bool]:
        """(error, permanent): (None, False) once notification has accepted the confirmation."""
        try:
            response = await self.kit.client("notification").request(
                "POST",
                "/notifications",
                json={"order_id": m.order_id, "recipient": m.recipient},
                headers={"Idempotency-Key": m.order_id},
            )
        except DownstreamError as exc:
            return f"notification: {exc.code}", False
        if response.status_code in (200, 201, 202):
            return None, False
        # A refusal is a failure, never "queued": a 4xx will not change by retrying.
        return (
            f"notification refused it ({response.status_code})",
            response.status_code not in RETRYABLE_4XX,
        )
