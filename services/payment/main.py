"""payment: a simulated card processor with idempotent charges and its own store.

A charge's Idempotency-Key (order uses the order id) is unique: a retry gets the first answer.
`POST /payments/resolve` settles an unknown outcome for good: it returns the charge made under a
key, or, if there is none, voids the key so that no charge can be made under it later (a late
request still in flight then finds the void). The reconciler in order relies on that.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from sqlalchemy import Float, Integer, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit import DatabaseDep, Kit, LogDep, ServiceError, Settings, SettingsDep
from services.kit.checkout import CardNumber, Currency
from services.kit.service_auth import ServiceOnly

# Documented in docs/services.md: these cards are declined with a 402, like a real processor.
DECLINED_CARDS = {
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
    "4000000000000069": "expired_card",
}


class Base(DeclarativeBase):
    pass


class Charge(Base):
    __tablename__ = "charges"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    order_id: Mapped[str] = mapped_column(String(40), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    card_last4: Mapped[str] = mapped_column(String(4))
    outcome: Mapped[str] = mapped_column(String(20))
    decline_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class ChargeRequest(BaseModel):
    order_id: str = Field(min_length=1, max_length=40)
    amount_cents: int = Field(gt=0, le=10_000_000)
    currency: Currency
    card_number: CardNumber


class ResolveRequest(BaseModel):
    model_config = {"extra": "forbid"}
    idempotency_key: str = Field(min_length=1, max_length=100)
    order_id: str = Field(min_length=1, max_length=40)
    currency: Currency = "EUR"


class ChargeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    payment_id: str = Field(validation_alias=AliasChoices("payment_id", "id"))
    order_id: str
    amount_cents: int
    currency: str
    card_last4: str
    outcome: str
    decline_code: str | None = None
    created_at: float


def _out(charge: Charge) -> ChargeOut:
    return ChargeOut.model_validate(charge)


def _result(charge: Charge, replayed: bool) -> JSONResponse:
    """The same answer for the first call and every replay: 201 approved, 402 declined."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    if charge.outcome == "voided":
        raise ServiceError(
            409,
            "charge_voided",
            "this charge was voided: its order was settled without it",
            details=_out(charge).model_dump(),
        )
    if charge.outcome == "declined":
        raise ServiceError(
            402,
            "card_declined",
            f"card declined: {charge.decline_code}",
            details=_out(charge).model_dump(),
        )
    return JSONResponse(_out(charge).model_dump(), status_code=201, headers=headers)


@dataclass
class PaymentState:
    """What payment's handlers share: one per app (`app.state.payment`), built by `create_app`."""

    payments: Counter  # charges by outcome


async def get_payments(request: Request) -> Counter:
    state: PaymentState = request.app.state.payment
    return state.payments


PaymentsDep = Annotated[Counter, Depends(get_payments)]

# Internal: only the lab's services (order) call payment (docs/security.md).
router = APIRouter(prefix="/payments", tags=["payments"], dependencies=[ServiceOnly])


@router.post("/charge", status_code=201, response_model=ChargeOut)
async def charge(
    body: ChargeRequest,
    db: DatabaseDep,
    settings: SettingsDep,
    payments: PaymentsDep,
    log: LogDep,
    idempotency_key: Annotated[str, Header(min_length=1, max_length=100)],
) -> JSONResponse:
    async with db.session() as s:
        existing = await _by_key(s, idempotency_key)
    if existing is not None:
        return _replay(existing, body)

    await asyncio.sleep(_processor_latency(settings))
    decline = DECLINED_CARDS.get(body.card_number)
    row = Charge(
        id="pay_" + uuid.uuid4().hex[:20],
        idempotency_key=idempotency_key,
        order_id=body.order_id,
        amount_cents=body.amount_cents,
        currency=body.currency,
        card_last4=body.card_number[-4:],
        outcome="declined" if decline else "approved",
        decline_code=decline,
        created_at=time.time(),
    )
    async with db.session() as s:
        s.add(row)
        try:
            await s.commit()
        except IntegrityError:
            # A concurrent call with the same key (or a void) won the race: answer with its result.
            await s.rollback()
            return _replay(await _by_key(s, idempotency_key), body)
    payments.labels(row.outcome).inc()
    log.info(
        "payment_processed",
        order_id=row.order_id,
        payment_id=row.id,
        outcome=row.outcome,
        amount_cents=row.amount_cents,
        card_last4=row.card_last4,
        decline_code=decline,
    )
    return _result(row, replayed=False)


async def _by_key(s: AsyncSession, key: str) -> Charge | None:
    return await s.scalar(select(Charge).where(Charge.idempotency_key == key))


def _replay(existing: Charge, body: ChargeRequest) -> JSONResponse:
    if existing.outcome == "voided":
        return _result(existing, replayed=True)
    same = (
        existing.order_id == body.order_id
        and existing.amount_cents == body.amount_cents
        and existing.currency == body.currency
        and existing.card_last4 == body.card_number[-4:]
    )
    if not same:
        raise ServiceError(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different charge",
        )
    return _result(existing, replayed=True)


@router.post("/resolve", response_model=ChargeOut)
async def resolve(
    body: ResolveRequest, db: DatabaseDep, payments: PaymentsDep, log: LogDep
) -> ChargeOut:
    """The final outcome under a key: the charge made under it, or a void that forbids one."""
    async with db.session() as s:
        existing = await _by_key(s, body.idempotency_key)
        if existing is not None:
            return _out(existing)
        row = Charge(
            id="pay_" + uuid.uuid4().hex[:20],
            idempotency_key=body.idempotency_key,
            order_id=body.order_id,
            amount_cents=0,
            currency=body.currency,
            card_last4="",
            outcome="voided",
            decline_code=None,
            created_at=time.time(),
        )
        s.add(row)
        try:
            await s.commit()
        except IntegrityError:
            # The charge itself committed a moment ago: that is the outcome.
            await s.rollback()
            return _out(await _by_key(s, body.idempotency_key))
    payments.labels("voided").inc()
    log.warning("payment_voided", order_id=row.order_id, payment_id=row.id)
    return _out(row)


@router.get("", response_model=list[ChargeOut])
async def list_charges(
    db: DatabaseDep,
    order_id: Annotated[str | None, Query(max_length=40)] = None,
    outcome: Annotated[Literal["approved", "declined", "voided"] | None, Query()] = None,
    created_after: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[ChargeOut]:
    """Newest first; with `created_after`, oldest first from that time (for paging forward)."""
    if created_after is None:
        query = select(Charge).order_by(Charge.created_at.desc())
    else:
        query = select(Charge).where(Charge.created_at > created_after).order_by(Charge.created_at)
    query = query.limit(limit)
    if order_id:
        query = query.where(Charge.order_id == order_id)
    if outcome:
        query = query.where(Charge.outcome == outcome)
    async with db.session() as s:
        return [_out(c) for c in await s.scalars(query)]


def _processor_latency(settings: Settings) -> float:
    """Log-normal, like real card networks: most calls quick, a long tail, capped at 2 s."""
    median = settings.payment_latency_median_ms / 1000
    if median <= 0:
        return 0.0
    return min(random.lognormvariate(math.log(median), settings.payment_latency_sigma), 2.0)


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("payment", settings)
    state = PaymentState(
        payments=Counter(
            "payments", "Charges by outcome.", ["outcome"], registry=kit.metrics.registry
        )
    )
    for outcome in ("approved", "declined", "voided", "error"):
        state.payments.labels(outcome)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await kit.open_database().create_all(Base.metadata)
        yield

    app = kit.build_app(title="payment", routers=[router], lifespan=lifespan)
    app.state.payment = state
    return app
