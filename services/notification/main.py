"""notification: accepts confirmations (202) and delivers them from a durable queue."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from sqlalchemy import Float, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit import DatabaseDep, Kit, LogDep, ServiceError, Settings, queue
from services.kit.metrics import LATENCY_BUCKETS
from services.kit.service_auth import ServiceOnly

LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Base(DeclarativeBase):
    pass


class Notification(Base):
    __tablename__ = "notifications"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(40), unique=True)
    recipient: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    traceparent: Mapped[str | None] = mapped_column(String(100), nullable=True)


class NewNotification(BaseModel):
    order_id: str = Field(min_length=1, max_length=40)
    recipient: str = Field(min_length=1, max_length=64)
    kind: Literal["order_confirmation"] = "order_confirmation"


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    notification_id: str = Field(validation_alias=AliasChoices("notification_id", "id"))
    order_id: str
    status: str
    attempts: int
    created_at: float
    delivered_at: float | None = None
    last_error: str | None = None


def _out(n: Notification) -> NotificationOut:
    return NotificationOut.model_validate(n)


class Outbox:
    """The delivery worker: polls the durable queue, delivers concurrently, retries, dead-letters.

    Queue state lives in the database, so a crash loses nothing; `backlog` mirrors it in memory
    only for the queue-depth and oldest-age gauges.
    """

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.wake = asyncio.Event()
        self.stalled_until = 0.0  # set by the "worker stall" fault
        r = kit.metrics.registry
        self.outcomes = Counter(
            "notifications", "Notifications by outcome.", ["outcome"], registry=r
        )
        for outcome in ("accepted", "delivered", "retried", "dead_lettered"):
            self.outcomes.labels(outcome)
        self.backlog = queue.Backlog(
            r,
            ("notification_queue_depth", "Notifications waiting for delivery."),
            ("notification_oldest_pending_age_seconds", "Age of the oldest waiting notification."),
        )
        self.attempt_duration = Histogram(
            "notification_delivery_duration_seconds",
            "One delivery attempt.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Histogram(
            "notification_delivery_lag_seconds",
            "Accepted to delivered.",
            buckets=LAG_BUCKETS,
            registry=r,
        )

    async def load(self) -> None:
        await self.backlog.load(self.kit.database, Notification, "queued")

    async def run(self, beat: Callable[[], None]) -> None:
        await queue.serve(
            self.wake,
            lambda: self.kit.settings.notification_poll_seconds,
            lambda: queue.due_rows(self.kit.database, Notification, "queued"),
            self.deliver,
            beat,
            paused=lambda: time.time() < self.stalled_until,
        )

    async def deliver(self, n: Notification) -> None:
        kit, settings = self.kit, self.kit.settings
        parent = propagate.extract({"traceparent": n.traceparent}) if n.traceparent else None
        with kit.tracer.start_as_current_span(
            "deliver notification",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={"order.id": n.order_id, "notification.attempt": n.attempts + 1},
        ) as span:
            start = time.perf_counter()
            median = settings.notification_latency_median_ms / 1000
            if median > 0:
                await asyncio.sleep(min(random.lognormvariate(math.log(median), 0.5), 5.0))
            failed = random.random() < settings.notification_failure_rate
            self.attempt_duration.observe(time.perf_counter() - start)
            now, attempts = time.time(), n.attempts + 1
            if not failed:
                values = {"status": "delivered", "attempts": attempts, "delivered_at": now}
                outcome = "delivered"
                self.lag.observe(now - n.created_at)
            elif attempts >= settings.notification_max_attempts:
                values = {
                    "status": "dead_lettered",
                    "attempts": attempts,
                    "last_error": "smtp: 451 temporary failure (gave up)",
                }
                outcome = "dead_lettered"
            else:
                backoff = settings.notification_retry_base_seconds * 2 ** (attempts - 1)
                values = {
                    "attempts": attempts,
                    "last_error": "smtp: 451 temporary failure",
                    "next_attempt_at": now + random.uniform(0.5, 1.0) * backoff,
                }
                outcome = "retried"
            if failed:
                span.set_status(trace.StatusCode.ERROR, values["last_error"])
            async with kit.database.session() as s:
                await s.execute(
                    update(Notification).where(Notification.id == n.id).values(**values)
                )
                await s.commit()
            if outcome != "retried":
                self.backlog.done(n.id)
            self.outcomes.labels(outcome).inc()
            log = kit.log.warning if failed else kit.log.info
            log(
                "notification_" + outcome,
                notification_id=n.id,
                order_id=n.order_id,
                attempt=attempts,
            )


@dataclass
class NotificationState:
    """What notification's handlers share: one per app (`app.state.notification`), built by
    `create_app`."""

    outbox: Outbox


async def get_outbox(request: Request) -> Outbox:
    state: NotificationState = request.app.state.notification
    return state.outbox


OutboxDep = Annotated[Outbox, Depends(get_outbox)]

# Internal: only the lab's services (order's outbox) call notification (docs/security.md).
router = APIRouter(prefix="/notifications", tags=["notifications"], dependencies=[ServiceOnly])


@router.post("", status_code=202, response_model=NotificationOut)
async def enqueue(
    body: NewNotification, outbox: OutboxDep, db: DatabaseDep, log: LogDep
) -> JSONResponse:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    now = time.time()
    row = Notification(
        id="ntf_" + uuid.uuid4().hex[:20],
        order_id=body.order_id,
        recipient=body.recipient,
        kind=body.kind,
        status="queued",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        traceparent=carrier.get("traceparent"),
    )
    async with db.session() as s:
        s.add(row)
        try:
            await s.commit()
        except IntegrityError:
            # One confirmation per order: a retried enqueue gets the first one back.
            await s.rollback()
            existing = await s.scalar(
                select(Notification).where(Notification.order_id == body.order_id)
            )
            return JSONResponse(_out(existing).model_dump(), status_code=202)
    outbox.backlog.add(row.id, now)
    outbox.outcomes.labels("accepted").inc()
    outbox.wake.set()
    log.info("notification_accepted", notification_id=row.id, order_id=row.order_id)
    return JSONResponse(_out(row).model_dump(), status_code=202)


@router.get("/{notification_id}", response_model=NotificationOut)
async def get_notification(
    notification_id: Annotated[str, Path(max_length=40)], db: DatabaseDep
) -> NotificationOut:
    async with db.session() as s:
        row = await s.get(Notification, notification_id)
    if row is None:
        raise ServiceError(404, "notification_not_found", f"no notification {notification_id}")
    return _out(row)


@router.get("", response_model=list[NotificationOut])
async def list_notifications(
    db: DatabaseDep,
    order_id: Annotated[str | None, Query(max_length=40)] = None,
    status: Annotated[Literal["queued", "delivered", "dead_lettered"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[NotificationOut]:
    query = select(Notification).order_by(Notification.created_at.desc()).limit(limit)
    if order_id:
        query = query.where(Notification.order_id == order_id)
    if status:
        query = query.where(Notification.status == status)
    async with db.session() as s:
        return [_out(n) for n in await s.scalars(query)]


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("notification", settings)
    outbox = Outbox(kit)

    async def stall(fault):
        outbox.stalled_until = fault.expires_at

        async def resume() -> None:
            outbox.stalled_until = 0.0
            outbox.wake.set()

        return resume

    kit.faults.register("worker_stall", stall)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await kit.open_database().create_all(Base.metadata)
        await outbox.load()
        yield

    kit.add_worker("delivery", outbox.run)

    app = kit.build_app(title="notification", routers=[router], lifespan=lifespan)
    app.state.notification = NotificationState(outbox=outbox)
    return app
