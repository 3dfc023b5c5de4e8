"""Ramp: grow linearly from a few shoppers to a peak, then hold it.

Finds the knee: the user count at which latency starts to climb and the saturation signals
(DB pool, queue, CPU) turn; the hold shows whether the system settles at the peak.
"""

from __future__ import annotations

from loadtest.shapes.base import ScaledShape


class RampShape(ScaledShape):
    """From ``start_users`` to ``peak_users`` over ``ramp_time`` s, then ``hold_time`` s flat."""

    start_users = 1
    peak_users = 60
    ramp_time = 300.0
    hold_time = 60.0
    spawn_rate = 2.0

    @property
    def duration(self) -> float:  # type: ignore[override]
        return self.ramp_time + self.hold_time

    def profile(self, t: float) -> tuple[float, float]:
        if t < self.ramp_time:
            users = self.start_users + (self.peak_users - self.start_users) * t / self.ramp_time
        else:
            users = self.peak_users
        # At least twice the per-second growth, so each tick's spawn finishes within it.
        growth = (self.peak_users - self.start_users) / self.ramp_time
        return users, max(self.spawn_rate, 2 * growth)
