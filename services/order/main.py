"""order: the order lifecycle (pending → paid | payment_failed), its own database."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Path, Query
from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy import Float, ForeignKey, Integer, String, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from services.kit import DownstreamError, Kit, KitDep, ServiceError, Settings
from services.kit.checkout import Cart

# The catalogue is the order service's data: prices are never taken from the client.
PRODUCTS = {
    "sku-espresso": ("Espresso beans 1 kg", 2490),
    "sku-grinder": ("Burr grinder", 12900),
    "sku-kettle": ("Gooseneck kettle", 5900),
    "sku-filter": ("Paper filters x100", 690),
    "sku-scale": ("Coffee scale", 3490),
    "sku-mug": ("Enamel mug", 1290),
}
TERMINAL = ("paid", "payment_failed")
RECONCILE_EVERY_SECONDS = 15.0


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    total_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    payment_method: Mapped[str] = mapped_column(String(20))
    card_last4: Mapped[str] = mapped_column(String(4))
    failure_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    items: Mapped[list[OrderItem]] = relationship(lazy="raise")


class OrderItem(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)


class NewOrder(Cart):
    user: str = Field(min_length=1, max_length=64)


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
    created_at: float
    items: list[ItemOut] | None = None


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


router = APIRouter(tags=["orders"])


@router.get("/products", response_model=list[Product])
async def products() -> list[Product]:
    return [Product(id=k, name=n, price_cents=p) for k, (n, p) in PRODUCTS.items()]


@router.post("/orders", status_code=201, response_model=OrderOut)
async def create_order(body: NewOrder, kit: KitDep) -> OrderOut:
    unknown = [i.product_id for i in body.items if i.product_id not in PRODUCTS]
    if unknown:
        raise ServiceError(422, "unknown_product", f"unknown product: {', '.join(unknown)}")
    now = time.time()
    order = Order(
        id="ord_" + uuid.uuid4().hex[:20],
        user=body.user,
        status="pending",
        total_cents=sum(PRODUCTS[i.product_id][1] * i.quantity for i in body.items),
        currency=body.currency,
        payment_method="card",
        card_last4=body.card_number[-4:],
        created_at=now,
        updated_at=now,
    )
    order.items = [
        OrderItem(
            product_id=i.product_id, quantity=i.quantity, unit_price_cents=PRODUCTS[i.product_id][1]
        )
        for i in body.items
    ]
    async with kit.database.session() as s:
        s.add(order)
        await s.commit()
    counter: Counter = kit.state["orders"]
    counter.labels("pending", "card").inc()
    kit.log.info("order_created", order_id=order.id, total_cents=order.total_cents)

    # The connection is not held while the payment runs: a slow processor must not drain the pool.
    try:
        response = await kit.client("payment").request(
            "POST",
            "/payments/charge",
            json={
                "order_id": order.id,
                "amount_cents": order.total_cents,
                "currency": order.currency,
                "card_number": body.card_number,
            },
            headers={"Idempotency-Key": order.id},
        )
    except DownstreamError as exc:
        await _finish(kit, order, "payment_failed", exc.code)
        exc.details = {**(exc.details or {}), "order_id": order.id}
        raise
    if response.status_code == 201:
        await _finish(kit, order, "paid", None)
        kit.state["revenue"].labels(order.currency).inc(order.total_cents)
        return _out(order)
    body_json = response.json()
    await _finish(kit, order, "payment_failed", body_json.get("code", "payment_rejected"))
    if response.status_code == 402:
        raise ServiceError(
            402,
            "card_declined",
            body_json.get("message", "card declined"),
            details={"order_id": order.id},
        )
    raise ServiceError(
        502,
        "payment_rejected",
        f"payment refused the charge ({response.status_code})",
        details={"order_id": order.id},
    )


async def _finish(kit: Kit, order: Order, status: str, failure: str | None) -> None:
    order.status, order.failure_code, order.updated_at = status, failure, time.time()
    async with kit.database.session() as s:
        await s.execute(
            update(Order)
            .where(Order.id == order.id)
            .values(status=status, failure_code=failure, updated_at=order.updated_at)
        )
        await s.commit()
    kit.state["orders"].labels(status, order.payment_method).inc()
    kit.log.info("order_" + status, order_id=order.id, failure_code=failure)


@router.get("/orders/{order_id}", response_model=OrderOut)
async def get_order(order_id: Annotated[str, Path(max_length=40)], kit: KitDep) -> OrderOut:
    async with kit.database.session() as s:
        order = await s.scalar(
            select(Order).where(Order.id == order_id).options(selectinload(Order.items))
        )
    if order is None:
        raise ServiceError(404, "order_not_found", f"no order {order_id}")
    return _out(order)


@router.get("/orders", response_model=list[OrderOut])
async def list_orders(
    kit: KitDep,
    status: Annotated[Literal["pending", "paid", "payment_failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[OrderOut]:
    query = select(Order).order_by(Order.created_at.desc()).limit(limit)
    if status:
        query = query.where(Order.status == status)
    async with kit.database.session() as s:
        return [_out(o, with_items=False) for o in await s.scalars(query)]


async def reconcile_pending(kit: Kit, older_than_seconds: float = 30.0) -> int:
    """After a crash, settle orders left pending by asking payment what really happened."""
    cutoff = time.time() - older_than_seconds
    async with kit.database.session() as s:
        stale = list(
            await s.scalars(
                select(Order).where(Order.status == "pending", Order.created_at < cutoff).limit(500)
            )
        )
    settled = 0
    for order in stale:
        try:
            response = await kit.client("payment").request(
                "GET", "/payments", params={"order_id": order.id}
            )
        except DownstreamError:
            break  # payment is down: try again at the next start
        charges = response.json()
        approved = any(c["outcome"] == "approved" for c in charges)
        await _finish(
            kit,
            order,
            "paid" if approved else "payment_failed",
            None if approved else "reconciled_no_charge",
        )
        settled += 1
    return settled


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("order", settings)
    registry = kit.metrics.registry
    kit.state["orders"] = Counter(
        "orders", "Orders by status reached.", ["status", "payment_method"], registry=registry
    )
    kit.state["revenue"] = Counter(
        "revenue_cents", "Revenue of paid orders, in cents.", ["currency"], registry=registry
    )
    for status in ("pending", *TERMINAL):
        kit.state["orders"].labels(status, "card")
    kit.state["revenue"].labels("EUR")
    kit.require_peer("payment")

    async def reconciler() -> None:
        while True:
            await asyncio.sleep(RECONCILE_EVERY_SECONDS)
            try:
                if settled := await reconcile_pending(kit):
                    kit.log.warning("orders_reconciled", count=settled)
            except Exception as exc:
                kit.log.warning("reconcile_failed", error=repr(exc))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await kit.open_database().create_all(Base.metadata)
        yield

    kit.add_worker("reconciler", reconciler)

    return kit.build_app(title="order", routers=[router], lifespan=lifespan)
