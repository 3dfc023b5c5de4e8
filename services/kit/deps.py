"""What a handler can ask for: one typed dependency per thing, never the whole kit.

In the style of full-stack-fastapi-template's `api/deps.py`: a handler names what it uses
(`db: DatabaseDep`, `log: LogDep`) and gets nothing else. A service's own dependencies (auth's
`VerifyKeyDep`, order's `LedgerDep`, ...) sit beside its routes and read the typed state object
its `create_app` put on `app.state`. All are async: a plain def dependency would be run in the
thread pool on every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from structlog.typing import FilteringBoundLogger

from .app import Kit
from .db import Database
from .http import ServiceClient
from .settings import Settings


async def get_kit(request: Request) -> Kit:
    """The app's kit: what the dependencies below read from (handlers take those instead)."""
    return request.app.state.kit


KitDep = Annotated[Kit, Depends(get_kit)]


async def get_settings(kit: KitDep) -> Settings:
    return kit.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_database(kit: KitDep) -> Database:
    """The service's database, opened at startup (`kit.open_database()` in its lifespan)."""
    if kit.database is None:
        raise RuntimeError(f"{kit.name} has no database open")
    return kit.database


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_log(kit: KitDep) -> FilteringBoundLogger:
    return kit.log


LogDep = Annotated[FilteringBoundLogger, Depends(get_log)]


def peer_client(peer: str) -> Callable[..., Awaitable[ServiceClient]]:
    """A dependency giving the (pooled) client for one peer, e.g.
    `AuthDep = Annotated[ServiceClient, Depends(peer_client("auth"))]`."""

    async def get_peer_client(kit: KitDep) -> ServiceClient:
        return kit.client(peer)

    return get_peer_client
