"""Steady: a constant number of shoppers, the baseline for drills and benchmarks.

A flat line makes every change in the services' graphs attributable to the fault, not to the
load; most drills use it.
"""

from __future__ import annotations

from loadtest.shapes.base import ScaledShape


class SteadyShape(ScaledShape):
    """``peak_users`` shoppers for ``duration`` seconds."""

    peak_users = 20
    spawn_rate = 5.0
    duration = 600.0

    def profile(self, t: float) -> tuple[float, float]:
        return self.peak_users, self.spawn_rate
