"""What every TriageLab load shape shares: time and user scaling from the environment.

A shape is written in its *natural* time (a soak lasts two hours, a diurnal day 24 minutes).
Drills and tests need the same curve in less time, so ``LOCUST_SHAPE_DURATION`` stretches or
squeezes the whole curve to that many seconds, and ``LOCUST_SHAPE_USERS`` rescales the user
counts so that the shape's peak is that many users. Spawn rates follow both, so a compressed
ramp still reaches its target within a tick (Locust's shape worker blocks while spawning).
"""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from locust import LoadTestShape
from locust.util.timespan import parse_timespan

# Below this Locust's shape worker spends more than a tick spawning one user; above the
# maximum Locust warns that spawning "sometimes causes issues".
MIN_SPAWN_RATE = 0.5
MAX_SPAWN_RATE = 100.0


def parse_seconds(raw: str) -> float:
    """Seconds from ``"90"``, ``"2.5"``, ``"90s"``, ``"10m"`` or ``"1h30m"``."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        value = float(parse_timespan(text))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"shape duration must be positive, got {raw!r}")
    return value


class ScaledShape(LoadTestShape):
    """Base class: subclasses give ``duration``, ``peak_users`` and ``profile(t)``."""

    abstract = True  # Locust only instantiates concrete shapes; this one is not

    duration: float
    """Natural length in seconds (a property where it derives from the phases); then None."""
    peak_users: ClassVar[int]
    """Highest user count of the shape; other user counts scale with it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if env is None else env
        raw_duration = (env.get("LOCUST_SHAPE_DURATION") or "").strip()
        raw_users = (env.get("LOCUST_SHAPE_USERS") or "").strip()
        self.time_scale = parse_seconds(raw_duration) / self.duration if raw_duration else 1.0
        if raw_users:
            peak = int(raw_users)
            if peak < 1:
                raise ValueError(f"LOCUST_SHAPE_USERS must be at least 1, got {raw_users!r}")
            self.user_scale = peak / self.peak_users
        else:
            self.user_scale = 1.0

    @property
    def total_seconds(self) -> float:
        """Wall-clock length of this run of the shape, after scaling."""
        return self.duration * self.time_scale

    @abstractmethod
    def profile(self, t: float) -> tuple[float, float]:
        """(users, spawn rate per second) at natural time ``t``, before scaling."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time() / self.time_scale
        if t >= self.duration:
            return None
        users, rate = self.profile(t)
        scaled = users * self.user_scale
        count = max(1, round(scaled)) if scaled > 0 else 0
        spawn_rate = rate * self.user_scale / self.time_scale
        spawn_rate = min(MAX_SPAWN_RATE, max(MIN_SPAWN_RATE, spawn_rate))
        return count, round(spawn_rate, 3)
