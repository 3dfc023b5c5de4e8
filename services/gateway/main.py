"""gateway: the public API. Checkout = verify token (auth) → order (db + payment + outbox)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Request, Response
from pydantic import BaseModel, Field

from services.kit import Kit, LogDep, ServiceError, Settings, peer_client
from services.kit.checkout import Cart, IdempotencyKey
from services.kit.http import ServiceClient, passed_on_headers

# The peers the gateway calls, each a dependency of its own (timeouts, retries, propagation).
AuthDep = Annotated[ServiceClient, Depends(peer_client("auth"))]
OrderDep = Annotated[ServiceClient, Depends(peer_client("order"))]


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
    # Kept for clients of the first API: the confirmation is always queued now (order's outbox).
    notification: Literal["queued"] = "queued"


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
        passed_on_headers(response) or None,
    )


async def current_user(
    auth: AuthDep, authorization: Annotated[str | None, Header(max_length=4096)] = None
) -> str:
    if not authorization:
        raise ServiceError(401, "missing_token", "a Bearer token is required")
    if not (authorization.isascii() and authorization.isprintable()):
        # A token is printable ASCII; anything else cannot even be sent on to auth (httpx
        # refuses it: a 500) and is no token of ours.
        raise ServiceError(401, "invalid_token", "the token is not valid")
    response = await auth.request("GET", "/auth/verify", headers={"Authorization": authorization})
    if response.status_code != 200:
        raise passthrough(response)
    return response.json()["sub"]


User = Annotated[str, Depends(current_user)]
# An id as order makes them ("ord_" and hex): checked before it goes into order's URL, and
# escaped there too, so no "?", "/", "#" or control character of a client's can reach the call.
OrderId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]
router = APIRouter(prefix="/api", tags=["shop"])


@router.post("/login")
async def login(body: LoginRequest, auth: AuthDep, request: Request) -> dict:
    # auth limits logins per client: tell it who the client is (it believes this header only
    # from a holder of the service credential, docs/security.md).
    client = request.client.host if request.client else ""
    response = await auth.request(
        "POST", "/auth/login", json=body.model_dump(), headers={"X-Client-Address": client}
    )
    if response.status_code != 200:
        raise passthrough(response)
    return response.json()


@router.get("/products")
async def products(orders: OrderDep) -> list[dict]:
    return (await orders.request("GET", "/products")).json()


@router.post("/checkout", status_code=201, response_model=CheckoutOut)
async def checkout(
    body: CheckoutRequest,
    user: User,
    orders: OrderDep,
    log: LogDep,
    response: Response,
    idempotency_key: Annotated[IdempotencyKey | None, Header()] = None,
    authorization: Annotated[str | None, Header(max_length=4096)] = None,
) -> CheckoutOut:
    """One purchase. With an Idempotency-Key (per shopper), a re-send replays the first answer
    (`Idempotent-Replayed: true`) instead of buying again; a key reused for another cart is a 422.
    The confirmation is written by order in the transaction that marks the order paid."""
    # The shopper's identity travels as their own token (signed by auth), which order verifies;
    # `user` (checked by auth a moment ago) is only for our log line.
    upstream = await orders.request(
        "POST",
        "/orders",
        json={"idempotency_key": idempotency_key, **body.model_dump()},
        headers={"Authorization": authorization or ""},
    )
    if upstream.status_code not in (200, 201):
        raise passthrough(upstream)
    order = upstream.json()
    if replayed := upstream.headers.get("idempotent-replayed"):
        response.headers["Idempotent-Replayed"] = replayed
    log.info(
        "checkout_completed",
        order_id=order["order_id"],
        user=user,
        total_cents=order["total_cents"],
        replayed=bool(replayed),
    )
    return CheckoutOut(
        order_id=order["order_id"],
        status=order["status"],
        total_cents=order["total_cents"],
        currency=order["currency"],
    )


@router.get("/orders/{order_id}")
async def get_order(order_id: OrderId, user: User, orders: OrderDep) -> dict:
    response = await orders.request("GET", f"/orders/{quote(order_id, safe='')}")
    if response.status_code != 200:
        raise passthrough(response)
    order = response.json()
    if order["user"] != user:  # someone else's order does not exist, as far as you know
        raise ServiceError(404, "order_not_found", f"no order {order_id}")
    return order


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("gateway", settings)
    kit.require_peer("auth")
    kit.require_peer("order")
    return kit.build_app(title="gateway", routers=[router])
