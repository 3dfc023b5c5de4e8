"""Who may call an internal route, and who the shopper is (docs/security.md).

- The service credential: every call a service makes to a peer carries ``X-Internal-Token``
  (``ServiceClient``); the internal routers of order, payment and notification depend on
  ``require_service``, which compares it in constant time with INTERNAL_TOKEN. Missing: 401
  ``service_token_required``; wrong: 403 ``service_token_invalid`` (the standard error body).
- The shopper: the gateway forwards the shopper's own bearer token (signed by auth) and order
  verifies it itself (``ShopperDep``): the identity is a verified claim (``sub``), never a body
  field a caller could fill in.
- The client address for auth's login limits: ``X-Client-Address`` is believed only from a
  caller that holds the service credential (the gateway); anyone else is their own address.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import jwt
from fastapi import Depends, Request

from .deps import SettingsDep
from .errors import ServiceError
from .settings import Settings

INTERNAL_TOKEN_HEADER = "X-Internal-Token"
CLIENT_ADDRESS_HEADER = "X-Client-Address"
# What auth signs its tokens with (services/auth/main.py imports these) and order checks.
SHOPPER_TOKEN_ISSUER = "triagelab-auth"
SHOPPER_TOKEN_ALGORITHM = "HS256"
MAX_USER_LENGTH = 64


def holds_service_token(request: Request, settings: Settings) -> bool:
    presented = request.headers.get(INTERNAL_TOKEN_HEADER)
    if not presented:
        return False
    # Header values arrive as latin-1 text; compare bytes, in constant time.
    return hmac.compare_digest(presented.encode("latin-1"), settings.internal_token.encode())


async def require_service(request: Request, settings: SettingsDep) -> None:
    """The dependency of an internal router: only the lab's own services get through."""
    if not request.headers.get(INTERNAL_TOKEN_HEADER):
        raise ServiceError(
            401,
            "service_token_required",
            f"this route is internal: it needs the lab's service credential "
            f"({INTERNAL_TOKEN_HEADER})",
        )
    if not holds_service_token(request, settings):
        raise ServiceError(403, "service_token_invalid", "the service credential is not valid")


ServiceOnly = Depends(require_service)
"""``APIRouter(dependencies=[ServiceOnly])``: every route of the router is internal."""


def client_address(request: Request, settings: Settings) -> str:
    """The end client's address: forwarded by the gateway, else the TCP peer."""
    forwarded = request.headers.get(CLIENT_ADDRESS_HEADER, "").strip()
    if forwarded and len(forwarded) <= 64 and holds_service_token(request, settings):
        return forwarded
    return request.client.host if request.client else "unknown"


def verify_shopper_token(token: str, key: str) -> tuple[str, int]:
    """``(sub, exp)`` of a valid token as auth's login issues them; ServiceError 401 otherwise
    (``token_expired`` or ``invalid_token``). Auth's /auth/verify and order both use it."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[SHOPPER_TOKEN_ALGORITHM],
            issuer=SHOPPER_TOKEN_ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise ServiceError(401, "token_expired", "the token has expired") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as exc:
        # PyJWT lets int() of a claim raise through: "exp": 1e999 is an OverflowError.
        raise ServiceError(401, "invalid_token", "the token is not valid") from exc
    # Signed with the key, but not what login issues (a float exp, a sub that is not a name):
    # a 401 like any invalid token, never a 500 while building the answer.
    exp, sub = claims.get("exp"), claims.get("sub")
    if not (type(exp) is int and isinstance(sub, str) and sub.isprintable()):
        raise ServiceError(401, "invalid_token", "the token is not valid")
    if not 1 <= len(sub) <= MAX_USER_LENGTH:
        raise ServiceError(401, "invalid_token", "the token is not valid")
    return sub, exp


async def shopper(request: Request, settings: SettingsDep) -> str:
    """The shopper a request acts for: the verified ``sub`` of its bearer token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        raise ServiceError(401, "missing_token", "a Bearer token is required")
    return verify_shopper_token(token.strip(), settings.jwt_secret)[0]


ShopperDep = Annotated[str, Depends(shopper)]
