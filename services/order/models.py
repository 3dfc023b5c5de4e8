"""order's tables: orders, their items, and the confirmations outbox (one database)."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The catalogue is the order service's data: prices are never taken from the client.
PRODUCTS = {
    "sku-espresso": ("Espresso beans 1 kg", 2490),
    "sku-grinder": ("Burr grinder", 12900),
    "sku-kettle": ("Gooseneck kettle", 5900),
    "sku-filter": ("Paper filters x100", 690),
    "sku-scale": ("Coffee scale", 3490),
    "sku-mug": ("Enamel mug", 1290),
}
# pending: created, its charge in flight. payment_unknown: the charge call timed out or failed in
# a way that does not say whether payment acted. Neither is an answer: the reconciler asks payment.
NONTERMINAL = ("pending", "payment_unknown")
TERMINAL = ("paid", "payment_failed")
STATUSES = (*NONTERMINAL, *TERMINAL)
OUTBOX_STATUSES = ("pending", "delivered", "dead_lettered")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    # One order per (shopper, Idempotency-Key): a re-sent checkout finds the first one.
    __table_args__ = (UniqueConstraint("user", "idempotency_key", name="uq_orders_user_key"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    total_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    payment_method: Mapped[str] = mapped_column(String(20))
    card_last4: Mapped[str] = mapped_column(String(4))
    failure_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    updated_at: Mapped[float] = mapped_column(Float)
    items: Mapped[list[OrderItem]] = relationship(lazy="raise")


class OrderItem(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)


class OutboxMessage(Base):
    """A confirmation to deliver, written in the transaction that marks its order paid."""

    __tablename__ = "outbox"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(40), unique=True)
    recipient: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    traceparent: Mapped[str | None] = mapped_column(String(100), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
