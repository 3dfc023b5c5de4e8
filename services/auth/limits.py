"""Login limits: attempts per client, failures per account, and a bounded hashing pool.

Each login costs one argon2id hash (19 MiB, ~20 ms of CPU). Without limits a client could make
auth hash without end (CPU) or many at once (memory). Three bounds, each answered with 429 and
a Retry-After (docs/security.md, counted in ``auth_login_rejections_total{reason}``):

- ``client_limit``: at most LOGIN_CLIENT_ATTEMPTS attempts per client address per
  LOGIN_CLIENT_WINDOW_SECONDS (the gateway forwards the shopper's address);
- ``account_limit``: at most LOGIN_ACCOUNT_FAILURES failed attempts per username per
  LOGIN_ACCOUNT_WINDOW_SECONDS (password guessing); a locked account is not hashed for at all;
- ``busy``: at most LOGIN_HASH_CONCURRENCY hashes run at once (threads) and at most
  LOGIN_HASH_QUEUE logins wait for one; a login beyond that is turned away at once.

Windows are fixed (a count and the window's start per key), so a key costs O(1) memory, and the
tables hold at most ``max_keys`` keys (the least recently seen go first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio

REASONS = ("client_limit", "account_limit", "busy")


class FixedWindow:
    """At most ``limit`` events per key in each window of ``seconds``."""

    def __init__(
        self,
        limit: int,
        seconds: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.seconds = seconds
        self.max_keys = max_keys
        self.clock = clock
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # key -> [start, count]

    def _current(self, key: str, now: float) -> list[float] | None:
        window = self._windows.get(key)
        if window is not None and now - window[0] >= self.seconds:
            del self._windows[key]
            return None
        return window

    def retry_after(self, key: str) -> int | None:
        """Whole seconds until ``key`` may try again; None when it may now."""
        now = self.clock()
        window = self._current(key, now)
        if window is None or window[1] < self.limit:
            return None
        return max(1, math.ceil(window[0] + self.seconds - now))

    def add(self, key: str) -> None:
        now = self.clock()
        window = self._current(key, now)
        if window is None:
            self._windows[key] = [now, 1]
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        else:
            window[1] += 1
            self._windows.move_to_end(key)


class HashPool:
    """Password hashes in at most ``concurrency`` threads, with at most ``queue`` waiting."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.capacity = concurrency + queue
        self.pending = 0  # running + waiting

    def full(self) -> bool:
        return self.pending >= self.capacity

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self.limiter)
        finally:
            self.pending -= 1
