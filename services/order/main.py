"""order: the order lifecycle (pending → paid | payment_failed, via payment_unknown when a charge's
outcome is unknown), its own database, and the outbox of confirmations.

Money rules live in ledger.py, the confirmation relay in outbox.py, the tables in models.py.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload
from structlog.typing import FilteringBoundLogger

from services.kit import DatabaseDep, Kit, LogDep, ServiceError, Settings, SettingsDep
from services.kit.checkout import Cart, IdempotencyKey, card_network
from services.kit.db import Database
from services.kit.service_auth import ServiceOnly, ShopperDep

from .ledger import Ledger
from .models import NONTERMINAL, OUTBOX_STATUSES, PRODUCTS, STATUSES, Base, Order, OrderItem
from .models import OutboxMessage as OutboxRow
from .outbox import Relay

REPLAYED = {"Idempotent-Replayed": "true"}


class NewOrder(Cart):
    # No `user`: the shopper is the verified `sub` of the bearer token the gateway forwards
    # (ShopperDep), never a body field a caller could fill in; extra fields are refused.
    model_config = {"extra": "forbid"}
    idempotency_key: IdempotencyKey | None = None


class ItemOut(BaseModel):
    product_id: str
    quantity: int
    unit_price_cents: int


class OrderOut(BaseModel):
    order_id: str
    user: str
    status: str
    total_cents: int
    currency: str
    payment_method: str
    failure_code: str | None = None
    idempotency_key: str | None = None
    created_at: float
    items: list[ItemOut] | None = None


class OutboxOut(BaseModel):
    order_id: str
    status: str
    attempts: int
    created_at: float
    delivered_at: float | None = None
    last_error: str | None = None


class Product(BaseModel):
    id: str
    name: str
    price_cents: int
    currency: str = "EUR"


def _out(o: Order, with_items: bool = True) -> OrderOut:
    return OrderOut(
        order_id=o.id,
        user=o.user,
        status=o.status,
        total_cents=o.total_cents,
        currency=o.currency,
        payment_method=o.payment_method,
        failure_code=o.failure_code,
        idempotency_key=o.idempotency_key,
        created_at=o.created_at,
        items=[
            ItemOut(
                product_id=i.product_id, quantity=i.quantity, unit_price_cents=i.unit_price_cents
            )
            for i in o.items
        ]
        if with_items
        else None,
    )


def fingerprint(body: NewOrder, user: str) -> str:
    """What makes two checkouts under one key the same request (items in any order). Only the
    card's last four digits go in: no hash of a card number is stored."""
    canonical = {
        "items": sorted((i.product_id, i.quantity) for i in body.items),
        "card_last4": body.card_number[-4:],
        "currency": body.currency,
        "user": user,
        "key": body.idempotency_key,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


@dataclass
class OrderState:
    """What order's handlers share: one per app (`app.state.order`), built by `create_app`."""

    ledger: Ledger


async def get_ledger(request: Request) -> Ledger:
    state: OrderState = request.app.state.order
    return state.ledger


LedgerDep = Annotated[Ledger, Depends(get_ledger)]

# Internal: only the lab's services (the gateway) call order (docs/security.md).
router = APIRouter(tags=["orders"], dependencies=[ServiceOnly])


@router.get("/products", response_model=list[Product])
async def products() -> list[Product]:
    return [Product(id=k, name=n, price_cents=p) for k, (n, p) in PRODUCTS.items()]


@router.post("/orders", status_code=201, response_model=OrderOut)
async def create_order(
    body: NewOrder,
    user: ShopperDep,
    ledger: LedgerDep,
    db: DatabaseDep,
    settings: SettingsDep,
    log: LogDep,
) -> OrderOut | JSONResponse:
    unknown = [i.product_id for i in body.items if i.product_id not in PRODUCTS]
    if unknown:
        raise ServiceError(422, "unknown_product", f"unknown product: {', '.join(unknown)}")
    digest = fingerprint(body, user)
    budget = settings.request_budget_seconds
    if body.idempotency_key and (existing := await _by_key(db, body, user)) is not None:
        return await _replay(ledger, log, budget, existing, body, digest)
    now = time.time()
    order = Order(
        id="ord_" + uuid.uuid4().hex[:20],
        user=user,
        status="pending",
        total_cents=sum(PRODUCTS[i.product_id][1] * i.quantity for i in body.items),
        currency=body.currency,
        payment_method=card_network(body.card_number),
        card_last4=body.card_number[-4:],
        idempotency_key=body.idempotency_key,
        request_hash=digest if body.idempotency_key else None,
        created_at=now,
        updated_at=now,
    )
    order.items = [
        OrderItem(
            product_id=i.product_id, quantity=i.quantity, unit_price_cents=PRODUCTS[i.product_id][1]
        )
        for i in body.items
    ]
    async with db.session() as s:
        s.add(order)
        try:
            await s.commit()
        except IntegrityError:
            # The same key arrived twice at once: the first one owns the order.
            await s.rollback()
            existing = await _by_key(db, body, user)
            if existing is None:
                raise
            return await _replay(ledger, log, budget, existing, body, digest)
    ledger.orders.labels("pending", order.payment_method).inc()
    log.info("order_created", order_id=order.id, total_cents=order.total_cents)
    # The connection is not held while the payment runs: a slow processor must not drain the pool.
    await ledger.charge(order, body.card_number)
    return _out(order)


async def _by_key(db: Database, body: NewOrder, user: str) -> Order | None:
    async with db.session() as s:
        return await s.scalar(
            select(Order)
            .where(Order.user == user, Order.idempotency_key == body.idempotency_key)
            .options(selectinload(Order.items))
        )


async def _replay(
    ledger: Ledger,
    log: FilteringBoundLogger,
    budget_seconds: float,
    order: Order,
    body: NewOrder,
    digest: str,
) -> JSONResponse:
    """A re-sent checkout: the first one's answer, never a second purchase."""
    if order.request_hash != digest:
        raise ServiceError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different checkout",
            details={"order_id": order.id},
        )
    age = time.time() - order.created_at
    if order.status == "pending" and age < budget_seconds:
        raise ServiceError(
            409,
            "checkout_in_progress",
            "a checkout with this Idempotency-Key is still being processed",
            details={"order_id": order.id},
            headers={"Retry-After": "1"},
        )
    if order.status in NONTERMINAL:
        # The shopper asks again: re-send the charge under the same key (payment answers with
        # the charge already made, or makes it once).
        log.info("order_charge_retried", order_id=order.id)
        await ledger.charge(order, body.card_number)
    if order.status != "paid":
        raise ledger.answer_error(order, headers=REPLAYED)
    return JSONResponse(_out(order).model_dump(), status_code=201, headers=REPLAYED)


@router.get("/orders/{order_id}", response_model=OrderOut)
async def get_order(order_id: Annotated[str, Path(max_length=40)], db: DatabaseDep) -> OrderOut:
    async with db.session() as s:
        order = await s.scalar(
            select(Order).where(Order.id == order_id).options(selectinload(Order.items))
        )
    if order is None:
        raise ServiceError(404, "order_not_found", f"no order {order_id}")
    return _out(order)


@router.get("/orders", response_model=list[OrderOut])
async def list_orders(
    db: DatabaseDep,
    status: Annotated[Literal[STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
    created_after: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[OrderOut]:
    async with db.session() as s:
        rows = await s.scalars(_newest(Order, status, created_after, limit))
        return [_out(o, with_items=False) for o in rows]


@router.get("/outbox", response_model=list[OutboxOut])
async def list_outbox(
    db: DatabaseDep,
    status: Annotated[Literal[OUTBOX_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
    created_after: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[OutboxOut]:
    """The confirmations order has written (for the post-drill data check and for triage)."""
    query = _newest(OutboxRow, status, created_after, limit)
    async with db.session() as s:
        return [
            OutboxOut(
                order_id=m.order_id,
                status=m.status,
                attempts=m.attempts,
                created_at=m.created_at,
                delivered_at=m.delivered_at,
                last_error=m.last_error,
            )
            for m in await s.scalars(query)
        ]


def _newest(model: type, status: str | None, created_after: float | None, limit: int) -> Select:
    """Rows of `model` newest first, optionally of one status and after a time."""
    query = select(model).order_by(model.created_at.desc()).limit(limit)
    if status:
        query = query.where(model.status == status)
    if created_after is not None:
        query = query.where(model.created_at > created_after)
    return query


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("order", settings)
    relay = Relay(kit)
    ledger = Ledger(kit, relay)
    kit.require_peer("payment")

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await kit.open_database().create_all(Base.metadata)
        await relay.load()
        yield

    kit.add_worker("reconciler", ledger.run)
    kit.add_worker("outbox-relay", relay.run)

    app = kit.build_app(title="order", routers=[router], lifespan=lifespan)
    app.state.order = OrderState(ledger=ledger)
    return app
