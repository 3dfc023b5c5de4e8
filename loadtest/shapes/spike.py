"""Spike: a quiet baseline, a sudden burst of shoppers, and the recovery.

Shows how alerts treat a short burst (a 5m window sees it, a 1h window barely does), whether
queues drain afterwards, and how long the latency tail takes to come back.
"""

from __future__ import annotations

from loadtest.shapes.base import ScaledShape


class SpikeShape(ScaledShape):
    """``base_users``; at ``warmup`` jump to ``peak_users`` for ``spike_time`` s; recover."""

    base_users = 10
    peak_users = 60
    warmup = 60.0
    spike_time = 60.0
    recovery = 120.0
    spawn_rate = 5.0
    spike_rate = 50.0

    @property
    def duration(self) -> float:  # type: ignore[override]
        return self.warmup + self.spike_time + self.recovery

    def profile(self, t: float) -> tuple[float, float]:
        if t < self.warmup:
            return self.base_users, self.spawn_rate
        if t < self.warmup + self.spike_time:
            return self.peak_users, self.spike_rate
        return self.base_users, self.spike_rate  # drop back as fast as the burst came
