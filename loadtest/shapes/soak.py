"""Soak: moderate load for hours, for faults that only show with time.

Memory growth, a slowly filling queue, a connection leak or a slow SLO burn (the 6h and 3d
burn-rate windows) need a long, boring run; compress it with LOCUST_SHAPE_DURATION in drills.
"""

from __future__ import annotations

from loadtest.shapes.base import ScaledShape


class SoakShape(ScaledShape):
    """Ramp to ``peak_users`` over ``ramp_time`` s, then hold until ``duration`` (2 h)."""

    peak_users = 15
    ramp_time = 60.0
    spawn_rate = 1.0
    duration = 7200.0

    def profile(self, t: float) -> tuple[float, float]:
        if t < self.ramp_time:
            return self.peak_users * t / self.ramp_time, self.spawn_rate
        return self.peak_users, self.spawn_rate
