"""Locust file for the load generator cost benchmark (tests/bench/locust_cost.py starts it).

A FastHttpUser with no wait, one GET per task against a near-free endpoint, and the project's
Prometheus exporter on Locust's request event as in loadtest/locustfile.py: what every request
of the shopper journey costs Locust itself, without the journey's JSON bodies.
"""

from __future__ import annotations

from locust import FastHttpUser, constant, events, task

from loadtest import prometheus_exporter

METRICS = prometheus_exporter.install(events)
METRICS.declare("GET", "/ping")


class Pinger(FastHttpUser):
    wait_time = constant(0)

    @task
    def ping(self) -> None:
        with self.client.get("/ping", name="/ping", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"got {resp.status_code}")
