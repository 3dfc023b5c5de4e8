"""The native lab end to end: real services, Prometheus, Alertmanager, receiver and Locust.

Everything polls with a deadline; nothing sleeps to synchronise. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
import yaml

from labctl.config import REPO_ROOT, SERVICES, loaded_rule_files
from labctl.native import procs
from labctl.native.lab import NativeLab
from labctl.native.receiver import read_alerts

pytestmark = pytest.mark.integration

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Call ``check`` until it returns something truthy; bounded in time and in rounds."""
    deadline = time.monotonic() + timeout
    pace = threading.Event()
    last: Any = None
    for _ in range(int(timeout / interval) + 2):
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            break
        pace.wait(interval)
    raise AssertionError(f"{what}: not true within {timeout:.0f}s (last: {last!r})")


def get(lab: NativeLab, component: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{lab.urls[component]}{path}", params=params, timeout=5, trust_env=False)


def promql(lab: NativeLab, query: str) -> list[dict[str, Any]]:
    body = get(lab, "prometheus", "/api/v1/query", query=query).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_all_five_services(native_lab: NativeLab) -> None:
    def all_up() -> dict[str, str] | None:
        rows = promql(native_lab, 'up{service=~"gateway|auth|order|payment|notification"}')
        values = {r["metric"]["service"]: r["value"][1] for r in rows}
        return values if values == dict.fromkeys(SERVICES, "1") else None

    up = poll(all_up, 60, "up == 1 for all five services")
    rows = promql(native_lab, 'up{service=~"gateway|auth|order|payment|notification"}')
    assert all(r["metric"]["job"] == r["metric"]["service"] for r in rows), rows
    assert set(up) == set(SERVICES)


def test_project_rule_groups_are_loaded(native_lab: NativeLab) -> None:
    expected = set()
    for path in loaded_rule_files():
        expected |= {g["name"] for g in yaml.safe_load(path.read_text())["groups"]}
    assert expected, "prometheus.yml's rule_files hold no rule groups"
    groups = get(native_lab, "prometheus", "/api/v1/rules").json()["data"]["groups"]
    assert {g["name"] for g in groups} == expected
    assert all(g["rules"] for g in groups)


def test_alertmanager_is_ready_and_runs_the_project_config(native_lab: NativeLab) -> None:
    assert get(native_lab, "alertmanager", "/-/ready").status_code == 200
    config = yaml.safe_load((REPO_ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    status = get(native_lab, "alertmanager", "/api/v2/status").json()
    loaded = yaml.safe_load(status["config"]["original"])
    assert {r["name"] for r in loaded["receivers"]} == receivers
    assert status["cluster"]["status"] == "disabled"  # --cluster.listen-address= (no gossip)
    hooks = [h["url"] for r in loaded["receivers"] for h in r.get("webhook_configs", [])]
    receiver = native_lab.urls["receiver"]
    assert hooks and all(h.startswith(f"{receiver}/hook/") for h in hooks), hooks


def test_prometheus_sends_alerts_to_the_lab_alertmanager(native_lab: NativeLab) -> None:
    def discovered() -> list[str]:
        body = get(native_lab, "prometheus", "/api/v1/alertmanagers").json()
        return [a["url"] for a in body["data"]["activeAlertmanagers"]]

    urls = poll(discovered, 30, "Prometheus discovers Alertmanager")
    assert urls == [f"{native_lab.urls['alertmanager']}/api/v2/alerts"]


def test_an_alert_reaches_the_receiver_through_alertmanager(native_lab: NativeLab) -> None:
    now = datetime.now(UTC)
    name = f"LabSmokeTest{int(now.timestamp())}"
    alert = {
        "labels": {"alertname": name, "severity": "page", "service": "labctl-test"},
        "annotations": {"summary": "receiver smoke test"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(seconds=30)).isoformat(),  # resolves on its own
    }
    url = f"{native_lab.urls['alertmanager']}/api/v2/alerts"
    assert httpx.post(url, json=[alert], timeout=5, trust_env=False).status_code == 200

    def recorded() -> list[dict[str, Any]]:
        return [r for r in read_alerts(native_lab.alerts_file) if name in r["alertnames"]]

    records = poll(recorded, 90, f"{name} recorded by the receiver")
    assert records[0]["channel"] == "page"
    assert records[0]["status"] == "firing"
    listed = get(native_lab, "receiver", "/alerts", channel="page").json()
    assert any(name in r["alertnames"] for r in listed)


def test_locust_traffic_raises_the_checkout_counter(native_lab: NativeLab) -> None:
    query = 'sum(http_requests_total{service="gateway",route="/api/checkout",method="POST"})'

    def value() -> float | None:
        rows = promql(native_lab, query)
        return float(rows[0]["value"][1]) if rows and float(rows[0]["value"][1]) > 0 else None

    first = poll(value, 90, "checkouts counted in Prometheus")
    later = poll(lambda: (v := value()) and v > first and v, 60, "the checkout counter rising")
    assert later > first


def test_second_up_starts_nothing(native_lab: NativeLab) -> None:
    before = {r.name: r.pid for r in native_lab.status()}
    rows = native_lab.up()
    assert {r.name: r.pid for r in rows} == before
    assert all(r.state == "ready" for r in rows), [(r.name, r.state) for r in rows]


def test_status_and_logs_per_component(native_lab: NativeLab) -> None:
    rows = {r.name: r for r in native_lab.status()}
    for name, row in rows.items():
        assert row.state == "ready", name
        assert row.pid and row.url and row.url.startswith("http://127.0.0.1:"), row
        assert row.rss_bytes > 0
        assert native_lab.log_file(name).stat().st_size > 0, name
    for name in SERVICES:
        assert (native_lab.runtime_dir / "traces" / f"{name}.jsonl").exists(), name


def test_down_stops_every_process_and_keeps_data(native_lab: NativeLab) -> None:
    """Runs last in this module; brings the lab back up for any later user of the fixture."""
    lab_procs = native_lab.processes()
    assert len(lab_procs) >= 9
    pids = [p.pid for p in lab_procs]

    stopped = native_lab.down()

    assert set(stopped) == {r.name for r in native_lab.status()}
    alive = [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]
    assert alive == []
    assert procs.marked_processes(str(native_lab.runtime_dir)) == []
    assert all(r.state == "stopped" for r in native_lab.status())
    data: Path = native_lab.runtime_dir
    assert any((data / "data").iterdir()), "the services' databases were deleted"
    assert any((data / "prometheus" / "data").iterdir()), "Prometheus data was deleted"

    rows = native_lab.up()  # the data left behind must not stop a restart
    assert all(r.state == "ready" for r in rows), [(r.name, r.state) for r in rows]


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_clock_step_does_not_make_the_lab_forget_its_processes(
    native_lab: NativeLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psutil's create_time is the boot time (/proc/stat, recomputed on each call) plus the start
    ticks: a wall-clock step moves it for every process at once. The lab must not care."""
    before = set(native_lab.urls)
    assert set(SERVICES) <= before
    real_boot_time = psutil._pslinux.boot_time  # type: ignore[attr-defined]
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real_boot_time() + 3.0)
    recorded = yaml.safe_load(native_lab.state_file.read_text())["components"]["gateway"]
    stepped = psutil.Process(recorded["pid"]).create_time() - recorded["create_time"]
    assert stepped > 2.5  # what psutil says moved with the clock
    assert set(native_lab.urls) == before  # every component still its own
    assert native_lab.missing() == []


def test_a_service_the_lab_lost_track_of_is_not_started_twice(
    native_lab: NativeLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If identity is lost anyway, a port that still answers is never restarted over."""
    from labctl.drills.restart import restart_services

    ports = {name: int(url.rsplit(":", 1)[1]) for name, url in native_lab.urls.items()}
    monkeypatch.setattr(procs, "own_process", lambda *_args: None)  # "everything died"
    said: list[str] = []
    assert restart_services(native_lab, ports, said.append) == []
    assert sum("still answers on port" in line for line in said) == len(SERVICES), said


def test_every_link_the_status_table_prints_answers(native_lab: NativeLab) -> None:
    """`make up` prints these: each must open, whatever UI this build of Prometheus and
    Alertmanager has (Debian's: classic UI only, and no Alertmanager UI at all)."""
    rows = [r for r in native_lab.status() if r.state == "ready"]
    assert {r.name for r in rows} >= {*SERVICES, "prometheus", "alertmanager", "receiver"}
    for row in rows:
        assert row.url, row
        resp = httpx.get(row.url, timeout=5, trust_env=False)
        assert resp.status_code == 200, f"{row.name}: {row.url} answers {resp.status_code}"
    home = httpx.get(native_lab.urls["alertmanager"] + "/", timeout=5, trust_env=False).text
    alertmanager = next(r for r in rows if r.name == "alertmanager")
    if "amtool" in home:  # a build without the UI (Debian's): the row says what to use instead
        assert alertmanager.url.endswith("/api/v2/alerts"), alertmanager
        assert "amtool --alertmanager.url" in alertmanager.what
    else:
        assert alertmanager.url.endswith("/"), alertmanager
    prom = next(r for r in rows if r.name == "prometheus")
    assert "alerts" in prom.url


def test_a_checkouts_trace_id_comes_back_from_query_exemplars(native_lab: NativeLab) -> None:
    """Exemplar storage is on: a latency series leads to a trace that the lab really recorded."""
    query = 'http_request_duration_seconds_bucket{service="gateway", route="/api/checkout"}'

    def exemplar_trace_ids() -> set[str] | None:
        now = time.time()
        body = get(native_lab, "prometheus", "/api/v1/query_exemplars", query=query,
                   start=str(now - 300), end=str(now)).json()  # fmt: skip
        assert body["status"] == "success", body
        ids = {
            e["labels"]["trace_id"]
            for series in body["data"]
            for e in series["exemplars"]
            if "trace_id" in e["labels"]
        }
        return ids or None

    ids = poll(exemplar_trace_ids, 60, "an exemplar on gateway's checkout latency")
    spans = native_lab.runtime_dir / "traces" / "gateway.jsonl"

    def recorded() -> str | None:
        with spans.open("rb") as fh:
            for line in fh:
                span = json.loads(line)
                if span["trace_id"] in ids and span["name"] == "POST /api/checkout":
                    return span["trace_id"]
        return None

    assert all(len(i) == 32 for i in ids), ids
    poll(recorded, 30, "the exemplar's trace in gateway's span file")


def test_the_gateway_takes_its_client_from_the_connection_not_from_x_forwarded_for(
    native_lab: NativeLab,
) -> None:
    """Nothing proxies the native gateway: an X-Forwarded-For from a client on loopback (which
    uvicorn trusts by default) must not become the client address, or every login could claim a
    new address and walk past auth's per-client limit."""
    r = httpx.get(
        native_lab.urls["gateway"] + "/api/products",
        headers={"X-Forwarded-For": "203.0.113.9"},
        timeout=10,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-trace-id"]
    spans = native_lab.runtime_dir / "traces" / "gateway.jsonl"

    def server_span() -> dict | None:
        with spans.open("rb") as fh:
            for line in fh:
                span = json.loads(line)
                if span["trace_id"] == trace_id and span["name"] == "GET /api/products":
                    return span
        return None

    span = poll(server_span, 30, "the request's server span in gateway's span file")
    assert span["attributes"]["net.peer.ip"] == "127.0.0.1", span["attributes"]
