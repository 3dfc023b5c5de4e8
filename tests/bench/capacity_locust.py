"""Locust file for the checkout capacity benchmark (tests/bench/capacity.py starts it).

Users: ``CheckoutShopper`` runs the shopper journey of loadtest/locustfile.py (log in once and
browse once on start, then check out; every ``BENCH_LOOKUP_EVERY``-th task looks the order up)
at a fixed rate of ``BENCH_USER_RATE`` tasks per second each (``constant_throughput``): a step of
N users offers about N x rate checkouts/s, so the load is set by the step, not by the latency.
``Shopper`` (the unchanged journey) can be picked instead on the command line.

Shape: ``StepShape`` holds ``BENCH_STEPS`` users ("10,20,40") for ``BENCH_STEP_SECONDS`` each,
spawning at ``BENCH_SPAWN_RATE``, and appends each step's start time to ``BENCH_STEP_LOG``
(JSON lines), so the benchmark can query Prometheus for exactly that step's window.
"""

from __future__ import annotations

import json
import os
import time

from locust import LoadTestShape, constant_throughput, task

from loadtest.locustfile import Shopper

USER_RATE = float(os.environ.get("BENCH_USER_RATE", "1.0"))
LOOKUP_EVERY = int(os.environ.get("BENCH_LOOKUP_EVERY", "0"))


class CheckoutShopper(Shopper):
    """The checkout journey at a fixed pace; abstract=False so Locust may pick it."""

    wait_time = constant_throughput(USER_RATE)
    _n = 0

    @task
    def buy(self) -> None:
        self._n += 1
        if LOOKUP_EVERY and self._n % LOOKUP_EVERY == 0:
            self.order_status()
        else:
            self.checkout()


# Locust inherits the base class's tasks; keep only ours (no browse-heavy mix).
CheckoutShopper.tasks = [CheckoutShopper.buy]


class StepShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.steps = [int(s) for s in os.environ.get("BENCH_STEPS", "10,20").split(",") if s]
        self.step_seconds = float(os.environ.get("BENCH_STEP_SECONDS", "30"))
        self.spawn_rate = float(os.environ.get("BENCH_SPAWN_RATE", "20"))
        self.log_path = os.environ.get("BENCH_STEP_LOG", "")
        self.current = -1

    def tick(self):
        t = self.get_run_time()
        index = int(t // self.step_seconds)
        if index >= len(self.steps):
            self._log(index, 0)
            return None
        if index != self.current:
            self.current = index
            self._log(index, self.steps[index])
        return self.steps[index], self.spawn_rate

    def _log(self, index: int, users: int) -> None:
        if not self.log_path:
            return
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": index, "users": users, "t": time.time()}) + "\n")
