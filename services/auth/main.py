"""auth: demo users with argon2 hashes; login issues a signed JWT; tokens are verified here."""

from __future__ import annotations

import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import anyio
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from prometheus_client import Counter
from pydantic import BaseModel, Field

from services.kit import Kit, LogDep, ServiceError, Settings, SettingsDep
from services.kit.service_auth import SHOPPER_TOKEN_ALGORITHM as ALGORITHM
from services.kit.service_auth import SHOPPER_TOKEN_ISSUER as ISSUER
from services.kit.service_auth import client_address, verify_shopper_token

from .limits import REASONS, FixedWindow, HashPool

# Demo users, documented in docs/services.md. Passwords are hashed at startup, never stored.
DEMO_PASSWORDS = {"alice": "wonderland", "bob": "builder"} | {
    f"shopper{i:02d}": "triagelab" for i in range(1, 51)
}

# OWASP's argon2id minimum (19 MiB, t=2): a login costs ~20 ms of CPU, off the event loop.
hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=128)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Identity(BaseModel):
    sub: str
    exp: int


def seed_users() -> dict[str, str]:
    """Hash each distinct demo password once (salted), and share it between users that use it."""
    by_password = {pw: hasher.hash(pw) for pw in set(DEMO_PASSWORDS.values())}
    return {user: by_password[pw] for user, pw in DEMO_PASSWORDS.items()}


@dataclass
class AuthState:
    """What auth's handlers share: one per app (`app.state.auth`), built by `create_app`."""

    logins: Counter
    verifications: Counter
    # Verification has its own reference to the key, so a fault can make the two disagree
    # (a botched key rotation: every token is rejected, a 401 storm).
    verify_key: str
    # Login limits (limits.py): per client, per account, and the bounded hashing pool.
    rejections: Counter
    client_attempts: FixedWindow
    account_failures: FixedWindow
    hashing: HashPool
    users: dict[str, str] = field(default_factory=dict)  # name -> hash, seeded at startup
    # Unknown users are checked against a real hash too, so timing does not reveal who exists.
    dummy_hash: str = ""


async def get_state(request: Request) -> AuthState:
    return request.app.state.auth


AuthStateDep = Annotated[AuthState, Depends(get_state)]


async def get_verify_key(state: AuthStateDep) -> str:
    return state.verify_key


VerifyKeyDep = Annotated[str, Depends(get_verify_key)]


async def get_verifications(state: AuthStateDep) -> Counter:
    return state.verifications


VerificationsDep = Annotated[Counter, Depends(get_verifications)]

router = APIRouter(prefix="/auth", tags=["auth"])


def _too_many(state: AuthState, log, reason: str, retry_after: int, message: str) -> ServiceError:
    state.rejections.labels(reason).inc()
    log.warning("login_rejected", reason=reason, retry_after=retry_after)
    return ServiceError(429, "too_many_logins", message, headers={"Retry-After": str(retry_after)})


@router.post("/login", response_model=TokenOut)
async def login(
    body: LoginRequest, request: Request, state: AuthStateDep, settings: SettingsDep, log: LogDep
) -> TokenOut:
    # The limits come before the hash: a rejected attempt costs no argon2 (limits.py).
    client = client_address(request, settings)
    if (wait := state.client_attempts.retry_after(client)) is not None:
        raise _too_many(state, log, "client_limit", wait, "too many login attempts from here")
    if (wait := state.account_failures.retry_after(body.username)) is not None:
        raise _too_many(state, log, "account_limit", wait, "too many failed logins: wait")
    if state.hashing.full():
        raise _too_many(state, log, "busy", 1, "too many logins at once: try again shortly")
    state.client_attempts.add(client)
    stored = state.users.get(body.username, state.dummy_hash)
    try:
        await state.hashing.run(hasher.verify, stored, body.password)
        ok = body.username in state.users
    except VerificationError:
        ok = False
    state.logins.labels("success" if ok else "failure").inc()
    if not ok:
        state.account_failures.add(body.username)
        log.info("login_failed", username=body.username)
        raise ServiceError(401, "invalid_credentials", "unknown user or wrong password")
    now = int(time.time())
    ttl = settings.jwt_ttl_seconds
    claims = {
        "sub": body.username,
        "iat": now,
        "exp": now + ttl,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)
    log.info("login_succeeded", username=body.username)
    return TokenOut(access_token=token, expires_in=ttl)


@router.get("/verify", response_model=Identity)
async def verify(
    key: VerifyKeyDep,
    counter: VerificationsDep,
    authorization: Annotated[str | None, Header(max_length=4096)] = None,
) -> Identity:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        counter.labels("invalid").inc()
        raise ServiceError(401, "missing_token", "a Bearer token is required")
    try:
        sub, exp = verify_shopper_token(token, key)
    except ServiceError as exc:
        counter.labels("expired" if exc.code == "token_expired" else "invalid").inc()
        raise
    counter.labels("valid").inc()
    return Identity(sub=sub, exp=exp)


def create_app(settings: Settings | None = None) -> FastAPI:
    kit = Kit("auth", settings)
    registry = kit.metrics.registry
    state = AuthState(
        logins=Counter("auth_logins", "Logins by outcome.", ["outcome"], registry=registry),
        verifications=Counter(
            "auth_token_verifications", "Token checks by outcome.", ["outcome"], registry=registry
        ),
        verify_key=kit.settings.jwt_secret,
        rejections=Counter(
            "auth_login_rejections",
            "Login attempts turned away with 429 before any password check, by reason.",
            ["reason"],
            registry=registry,
        ),
        client_attempts=FixedWindow(
            kit.settings.login_client_attempts, kit.settings.login_client_window_seconds
        ),
        account_failures=FixedWindow(
            kit.settings.login_account_failures, kit.settings.login_account_window_seconds
        ),
        hashing=HashPool(kit.settings.login_hash_concurrency, kit.settings.login_hash_queue),
    )
    for outcome in ("success", "failure"):
        state.logins.labels(outcome)
    for reason in REASONS:
        state.rejections.labels(reason)
    for outcome in ("valid", "invalid", "expired"):
        state.verifications.labels(outcome)

    async def key_mismatch(_fault):
        state.verify_key = "rotated-" + uuid.uuid4().hex

        async def restore() -> None:
            state.verify_key = kit.settings.jwt_secret

        return restore

    kit.faults.register("signing_key_mismatch", key_mismatch)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.users = await anyio.to_thread.run_sync(seed_users)
        state.dummy_hash = state.users["alice"]
        yield

    app = kit.build_app(title="auth", routers=[router], lifespan=lifespan)
    app.state.auth = state
    return app
