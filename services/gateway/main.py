"""gateway: the public API. Checkout = verify token (auth) → order (db + payment) → notify."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Annotated, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Path
from prometheus_client import Gauge
from pydantic import BaseModel, Field

from services.kit import DownstreamError, Kit, KitDep, ServiceError, Settings
from services.kit.checkout import Cart

OUTBOX_LIMIT = 10_000


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=128)


class CheckoutRequest(Cart):
    model_config = {"extra": "forbid"}


class CheckoutOut(BaseModel):
    order_id: str
    status: str
    total_cents: int
    currency: str
    notification: Literal["queued", "deferred"]


def passthrough(response: httpx.Response) -> ServiceError:
    """A peer's 4xx keeps its status and its code: the client made the mistake, not us."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    return ServiceError(
        response.status_code,
        body.get("code", "rejected"),
        body.get("message", f"request rejected ({response.status_code})"),
        body.get("details"),
    )


async def current_user(
    kit: KitDep, authorization: Annotated[str | None, Header(max_length=4096)] = None
) -> str:
    if not authorization:
        raise ServiceError(401, "missing_token", "a Bearer token is required")
    response = await kit.client("auth").request(
        "GET", "/auth/verify", headers={"Authorization": authorization}
    )
    if response.status_code != 200:
        raise passthrough(response)
    return response.json()["sub"]


User = Annotated[str, Depends(current_user)]
router = APIRouter(prefix="/api", tags=["shop"])


@router.post("/login")
async def login(body: LoginRequest, kit: KitDep) -> dict:
    response = await kit.client("auth").request("POST", "/auth/login", json=body.model_dump())
    if response.status_code != 200:
        raise passthrough(response)
    return response.json()


@router.get("/products")
async def products(kit: KitDep) -> list[dict]:
    return (await kit.client("order").request("GET", "/products")).json()


@router.post("/checkout", status_code=201, response_model=CheckoutOut)
async def checkout(body: CheckoutRequest, user: User, kit: KitDep) -> CheckoutOut:
    response = await kit.client("order").request(
        "POST", "/orders", json={"user": user, **body.model_dump()}
    )
    if response.status_code != 201:
        raise passthrough(response)
    order = response.json()
    notification = await kit.state["notifier"].send(order["order_id"], user)
    kit.log.info(
        "checkout_completed",
        order_id=order["order_id"],
        user=user,
        total_cents=order["total_cents"],
        notification=notification,
    )
    return CheckoutOut(
        order_id=order["order_id"],
        status=order["status"],
        total_cents=order["total_cents"],
        currency=order["currency"],
        notification=notification,
    )


@router.get("/orders/{order_id}")
async def get_order(order_id: Annotated[str, Path(max_length=40)], user: User, kit: KitDep) -> dict:
    response = await kit.client("order").request("GET", f"/orders/{order_id}")
    if response.status_code != 200:
        raise passthrough(response)
    order = response.json()
    if order["user"] != user:  # someone else's order does not exist, as far as you know
        raise ServiceError(404, "order_not_found", f"no order {order_id}")
    return order


class Notifier:
    """Enqueues confirmations; while notification is down, keeps them and retries in background.

    A notification outage must not fail a paid checkout. The deferred queue is in memory (a
    gateway restart during an outage loses it: documented in docs/architecture.md).
    """

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.deferred: asyncio.Queue[tuple[str, str]] = asyncio.Queue(OUTBOX_LIMIT)
        Gauge(
            "gateway_notification_outbox_depth",
            "Confirmations waiting for notification.",
            registry=kit.metrics.registry,
        ).set_function(self.deferred.qsize)

    async def _post(self, order_id: str, user: str) -> None:
        await self.kit.client("notification").request(
            "POST",
            "/notifications",
            json={"order_id": order_id, "recipient": user},
            headers={"Idempotency-Key": order_id},
        )

    async def send(self, order_id: str, user: str) -> Literal["queued", "deferred"]:
        try:
            await self._post(order_id, user)
            return "queued"
        except DownstreamError as exc:
            self.kit.log.warning("notification_deferred", order_id=order_id, reason=exc.code)
            with contextlib.suppress(asyncio.QueueFull):
                self.deferred.put_nowait((order_id, user))
            return "deferred"

    async def run(self) -> None:
        delay = 0.5
        while True:
            order_id, user = await self.deferred.get()
            try:
                await self._post(order_id, user)
                delay = 0.5
            except DownstreamError:
                self.deferred.put_nowait((order_id, user))
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 10.0)


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("gateway", settings)
    notifier = kit.state["notifier"] = Notifier(kit)
    kit.require_peer("auth")
    kit.require_peer("order")

    kit.add_worker("deferred-notifications", notifier.run)
    return kit.build_app(title="gateway", routers=[router])
