"""The Prometheus side of a drill: the few API calls it needs, and alerts turned into
firing intervals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from labctl.config import HTTP_TIMEOUT
from labctl.drills.data_check import parse_ts
from labctl.drills.journal import AlertSeen


@dataclass
class AlertRecord:
    """One alert (name + labels) seen during the run, with its firing intervals."""

    name: str
    labels: dict[str, str]
    active_at: float
    fired_at: float | None = None
    intervals: list[list[float | None]] = field(default_factory=list)
    carried: bool = False  # already active before the drill started: not the drill's doing

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")

    def seen(self) -> AlertSeen:
        """The journal's record of it."""
        return AlertSeen(
            alert=self.name,
            labels=self.labels,
            active_at=self.active_at,
            fired_at=self.fired_at,
            intervals=self.intervals,
            carried=self.carried,
        )


class Prometheus:
    """The few Prometheus API calls a drill needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT, trust_env=False)
        self._for: dict[str, float] | None = None

    def alerts(self) -> list[dict[str, Any]]:
        body = self.http.get("/api/v1/alerts").json()
        return body["data"]["alerts"]

    def rule_for(self) -> dict[str, float]:
        """Seconds of ``for:`` per alert name (the longest, when a name has several rules)."""
        if self._for is None:
            found: dict[str, float] = {}
            body = self.http.get("/api/v1/rules", params={"type": "alert"}).json()
            for group in body["data"]["groups"]:
                for rule in group["rules"]:
                    name = rule["name"]
                    found[name] = max(found.get(name, 0.0), float(rule.get("duration", 0)))
            self._for = found
        return self._for

    def query_range(
        self, expr: str, start: float, end: float, step: float = 5.0, *, strict: bool = False
    ) -> list[dict]:
        """The series of a range query; a refused query gives [] (``strict``: ValueError)."""
        resp = self.http.get(
            "/api/v1/query_range",
            params={"query": expr, "start": start, "end": end, "step": step},
            timeout=30,
        )
        body = resp.json()
        if body.get("status") != "success":
            if strict:
                raise ValueError(f"Prometheus refused the query: {body.get('error', body)}")
            return []
        return body["data"]["result"]

    def close(self) -> None:
        self.http.close()


class AlertTracker:
    """Turns polls of /api/v1/alerts into firing intervals per alert."""

    def __init__(self, prom: Prometheus, started: float) -> None:
        self.prom = prom
        self.started = started
        self.records: dict[tuple[str, tuple[tuple[str, str], ...]], AlertRecord] = {}
        self.pending: list[str] = []
        self.errors = 0

    def poll(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            alerts = self.prom.alerts()
            rule_for = self.prom.rule_for()
        except (httpx.HTTPError, ValueError, KeyError):
            self.errors += 1
            return
        firing_keys = set()
        self.pending = []
        for alert in alerts:
            labels = dict(alert["labels"])
            name = labels.get("alertname", "")
            if alert["state"] != "firing":
                self.pending.append(name)
                continue
            key = (name, tuple(sorted(labels.items())))
            firing_keys.add(key)
            active_at = parse_ts(alert["activeAt"])
            fired_at = min(now, active_at + rule_for.get(name, 0.0))
            record = self.records.get(key)
            if record is None:
                record = self.records[key] = AlertRecord(
                    name, labels, active_at, carried=active_at < self.started
                )
            if not record.intervals or record.intervals[-1][1] is not None:
                record.intervals.append([fired_at, None])
                if record.fired_at is None:
                    record.fired_at = fired_at
        for key, record in self.records.items():
            if key not in firing_keys and record.intervals and record.intervals[-1][1] is None:
                record.intervals[-1][1] = now

    def close(self, now: float) -> None:
        for record in self.records.values():
            if record.intervals and record.intervals[-1][1] is None:
                record.intervals[-1][1] = now

    def fired(self, include_carried: bool = False) -> list[AlertRecord]:
        return sorted(
            (r for r in self.records.values() if r.fired_at and (include_carried or not r.carried)),
            key=lambda r: r.fired_at or 0,
        )

    def firing_now(self) -> list[AlertRecord]:
        return [r for r in self.records.values() if r.intervals and r.intervals[-1][1] is None]
