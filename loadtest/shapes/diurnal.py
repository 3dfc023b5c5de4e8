"""Diurnal: a compressed day, quiet at night and busiest in the afternoon.

Teaches why static thresholds fail (the same error count is a different ratio at 3 am and at
2 pm) and why burn-rate alerts use ratios; by default one hour of the day lasts one minute.
"""

from __future__ import annotations

import math

from loadtest.shapes.base import ScaledShape


class DiurnalShape(ScaledShape):
    """Cosine day between ``min_users`` and ``peak_users``, highest at ``peak_hour``."""

    min_users = 4
    peak_users = 40
    peak_hour = 14.0
    day_length = 1440.0  # seconds per simulated day
    days = 1
    spawn_rate = 2.0

    @property
    def duration(self) -> float:  # type: ignore[override]
        return self.day_length * self.days

    def hour(self, t: float) -> float:
        """Simulated hour of day (0..24) at natural time ``t``; the run starts at midnight."""
        return (t / self.day_length * 24.0) % 24.0

    def profile(self, t: float) -> tuple[float, float]:
        phase = 2 * math.pi * (self.hour(t) - self.peak_hour) / 24.0
        users = self.min_users + (self.peak_users - self.min_users) * (1 + math.cos(phase)) / 2
        return users, self.spawn_rate
