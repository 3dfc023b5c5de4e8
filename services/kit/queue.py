"""Workers that serve a queue kept in a database table (order's outbox relay, notification's
delivery worker): the rows are the truth, so a crash loses nothing; the worker wakes on new
work or every `poll_seconds`, takes what is due, and handles it concurrently."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import select

from .db import Database

BATCH = 64


async def serve(
    wake: asyncio.Event,
    poll_seconds: Callable[[], float],
    fetch_due: Callable[[], Awaitable[list[Any]]],
    handle: Callable[[Any], Awaitable[None]],
    beat: Callable[[], None],
    paused: Callable[[], bool] = lambda: False,
) -> None:
    """The worker's loop, for `Kit.add_worker` (its supervisor restarts it if a batch raises).

    `beat` after every round that fetched and handled what was due (none due is a round too);
    a paused worker does not beat."""
    while True:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that races
        # the inner wait, which left a worker unstoppable at shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_seconds()):
                await wake.wait()
        wake.clear()
        if paused():
            continue
        # The poll is not traced (a trace of one SELECT twice a second would bury the checkouts
        # in Jaeger); each handled item is, in the trace it belongs to.
        with suppress_instrumentation():
            due = await fetch_due()
        if due:
            await asyncio.gather(*(handle(item) for item in due))
        beat()


async def due_rows(db: Database, model: Any, waiting: str) -> list[Any]:
    """Up to BATCH rows of `model` in status `waiting` whose next attempt is due, oldest first
    (the table needs `status` and `next_attempt_at` columns)."""
    async with db.session() as s:
        return list(
            await s.scalars(
                select(model)
                .where(model.status == waiting, model.next_attempt_at <= time.time())
                .order_by(model.next_attempt_at)
                .limit(BATCH)
            )
        )


class Backlog:
    """The waiting rows (id -> created_at), mirrored in memory for a depth gauge and an
    oldest-age gauge: scrapes never touch the database. The table stays the truth (`load`)."""

    def __init__(
        self, registry: CollectorRegistry, depth: tuple[str, str], oldest: tuple[str, str]
    ) -> None:
        """`depth` and `oldest`: (metric name, help) of the two gauges."""
        self.waiting: dict[str, float] = {}
        Gauge(*depth, registry=registry).set_function(lambda: len(self.waiting))
        Gauge(*oldest, registry=registry).set_function(self.oldest_age)

    def oldest_age(self) -> float:
        return time.time() - min(self.waiting.values()) if self.waiting else 0.0

    def add(self, row_id: str, created_at: float) -> None:
        self.waiting[row_id] = created_at

    def done(self, row_id: str) -> None:
        self.waiting.pop(row_id, None)

    async def load(self, db: Database, model: Any, waiting: str) -> None:
        async with db.session() as s:
            rows = await s.execute(
                select(model.id, model.created_at).where(model.status == waiting)
            )
            self.waiting = {i: c for i, c in rows}
