"""Load generator: shapes, settings and exporter as units; a real Locust run as integration."""

from __future__ import annotations

import contextlib
import csv
import importlib
import itertools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("steady", "ramp", "spike", "soak", "diurnal")


def import_without_monkey_patch(module: str) -> ModuleType:
    """Import a module that imports Locust, without Locust monkey-patching pytest's process.

    ``import locust`` calls gevent's ``patch_all()`` unless LOCUST_SKIP_MONKEY_PATCH is set;
    the variable is removed again so that Locust processes started by tests are patched.
    """
    if "locust" not in sys.modules:
        os.environ["LOCUST_SKIP_MONKEY_PATCH"] = "1"
        try:
            importlib.import_module("locust")
        finally:
            os.environ.pop("LOCUST_SKIP_MONKEY_PATCH", None)
    return importlib.import_module(module)


def shape_class(name: str) -> type:
    """The one concrete LoadTestShape in loadtest/shapes/<name>.py, found the way Locust does."""
    module = import_without_monkey_patch(f"loadtest.shapes.{name}")
    from locust.util.load_locustfile import is_shape_class

    found = [v for v in vars(module).values() if is_shape_class(v)]
    assert len(found) == 1, f"{name}.py must define exactly one concrete shape, found {found}"
    return found[0]


def ticks(shape: Any, times: list[float]) -> list[tuple[int, float] | None]:
    """tick() at each fake run time (seconds since the shape started)."""
    out = []
    for t in times:
        shape.get_run_time = lambda t=t: t
        out.append(shape.tick())
    return out


def users(results: list[tuple[int, float] | None]) -> list[int | None]:
    return [None if r is None else r[0] for r in results]


# ---------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("name", SHAPES)
def test_each_shape_file_has_one_documented_shape_that_ends(name: str) -> None:
    cls = shape_class(name)
    assert (cls.__doc__ or "").strip() and (sys.modules[cls.__module__].__doc__ or "").strip()
    shape = cls(env={})
    assert shape.tick is not None
    first, last = ticks(shape, [0.0, shape.duration])
    assert first is not None and first[0] >= 0 and first[1] > 0
    assert last is None  # Locust stops the run (and a headless Locust exits) on None


def test_steady_is_flat_until_its_duration() -> None:
    shape = shape_class("steady")(env={})
    assert ticks(shape, [0, 1, 299.5, 599.9, 600, 601]) == [(20, 5.0)] * 4 + [None, None]


def test_ramp_grows_linearly_then_holds() -> None:
    shape = shape_class("ramp")(env={})
    seq = ticks(shape, [float(t) for t in range(0, 361, 10)])
    counts = users(seq)
    assert counts[0] == 1 and counts[-1] is None
    ramp = counts[: 300 // 10 + 1]
    assert all(a <= b for a, b in itertools.pairwise(ramp)), ramp
    assert ramp[15] == round(1 + 59 * 150 / 300)  # half way
    assert set(counts[30:-1]) == {60}  # hold at the peak
    # spawning each step must finish inside Locust's one-second tick
    per_second_growth = 59 / 300
    assert all(r is None or r[1] >= per_second_growth for r in seq)


def test_spike_jumps_up_and_back_down() -> None:
    shape = shape_class("spike")(env={})
    counts = users(ticks(shape, [0, 59, 60, 119, 120, 239, 240]))
    assert counts == [10, 10, 60, 60, 10, 10, None]


def test_soak_ramps_in_then_holds_for_two_hours() -> None:
    shape = shape_class("soak")(env={})
    counts = users(ticks(shape, [0, 30, 60, 3600, 7199, 7200]))
    assert counts == [0, 8, 15, 15, 15, None]


def test_diurnal_is_quiet_at_night_and_busiest_in_the_afternoon() -> None:
    shape = shape_class("diurnal")(env={})
    minute = 60.0  # one simulated hour
    by_hour = users(ticks(shape, [h * minute for h in range(24)]))
    assert min(by_hour) == 4 and by_hour.index(4) == 2  # 2 am
    assert max(by_hour) == 40 and by_hour.index(40) == 14  # 2 pm
    assert by_hour[10] == by_hour[18]  # symmetric around the peak
    assert ticks(shape, [24 * minute]) == [None]


def test_shape_duration_env_compresses_time_and_speeds_up_spawning() -> None:
    natural = shape_class("spike")(env={})
    fast = shape_class("spike")(env={"LOCUST_SHAPE_DURATION": "24"})  # 240 s -> 24 s
    assert fast.total_seconds == 24
    assert users(ticks(fast, [0, 5.9, 6, 11.9, 12, 23.9, 24])) == [10, 10, 60, 60, 10, 10, None]
    (_, slow_rate), (_, fast_rate) = ticks(natural, [0])[0], ticks(fast, [0])[0]
    assert fast_rate == pytest.approx(slow_rate * 10)
    # the 50/s burst would be 500/s; capped where Locust starts warning
    assert ticks(fast, [7])[0][1] == 100.0


def test_shape_duration_accepts_locust_timespans() -> None:
    soak = shape_class("soak")(env={"LOCUST_SHAPE_DURATION": "2m"})
    assert soak.total_seconds == 120
    assert users(ticks(soak, [119.9, 120])) == [15, None]


def test_shape_users_env_rescales_every_phase() -> None:
    shape = shape_class("spike")(env={"LOCUST_SHAPE_USERS": "6"})
    assert users(ticks(shape, [0, 60, 120])) == [1, 6, 1]  # 10/60*6 = 1, never 0


@pytest.mark.parametrize(
    "env",
    [
        {"LOCUST_SHAPE_DURATION": "0"},
        {"LOCUST_SHAPE_DURATION": "soon"},
        {"LOCUST_SHAPE_USERS": "0"},
    ],
)
def test_bad_shape_env_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        shape_class("steady")(env=env)


# ---------------------------------------------------------------------------------------------
# settings


def test_default_user_pool_is_the_seeded_demo_users() -> None:
    from loadtest.config import LoadSettings

    pool = LoadSettings.from_env({}).users
    names = [name for name, _ in pool]
    assert len(pool) == 52 and len(set(names)) == 52
    assert pool[0] == ("shopper01", "triagelab") and pool[49] == ("shopper50", "triagelab")
    assert ("alice", "wonderland") in pool and ("bob", "builder") in pool


def test_settings_from_env() -> None:
    from loadtest.config import LoadSettings

    s = LoadSettings.from_env(
        {
            "LOCUST_USER_POOL": "u[08-10]:pw, v[9-10]:x, carol:c:with:colons",
            "LOCUST_DECLINE_RATE": "0.5",
            "LOCUST_WAIT_MIN": "0.1",
            "LOCUST_WAIT_MAX": "0.2",
        }
    )
    assert s.users == (
        ("u08", "pw"),
        ("u09", "pw"),
        ("u10", "pw"),
        ("v9", "x"),
        ("v10", "x"),
        ("carol", "c:with:colons"),
    )
    assert (s.decline_rate, s.wait_min, s.wait_max) == (0.5, 0.1, 0.2)


@pytest.mark.parametrize(
    "env",
    [
        {"LOCUST_USER_POOL": "nopassword"},
        {"LOCUST_USER_POOL": "u[5-1]:pw"},
        {"LOCUST_USER_POOL": " , "},
        {"LOCUST_DECLINE_RATE": "1.5"},
        {"LOCUST_DECLINE_RATE": "three percent"},
        {"LOCUST_WAIT_MIN": "2", "LOCUST_WAIT_MAX": "1"},
    ],
)
def test_bad_settings_are_refused_with_the_variable_name(env: dict[str, str]) -> None:
    from loadtest.config import LoadSettings, SettingsError

    with pytest.raises(SettingsError):
        LoadSettings.from_env(env)


# ---------------------------------------------------------------------------------------------
# exporter


def test_exporter_counts_outcomes_failures_and_latency() -> None:
    from loadtest.prometheus_exporter import LocustMetrics

    m = LocustMetrics(process=False)
    m.declare("POST", "/api/checkout", ("success", "failure", "declined"))
    value = m.registry.get_sample_value
    checkout = {"method": "POST", "name": "/api/checkout"}
    assert value("locust_failures_total", checkout) == 0  # exists before the first failure

    m.on_request("POST", "/api/checkout", 3.0, None, {"expect": "approved"})
    m.on_request("POST", "/api/checkout", 40.0, None, {"expect": "declined"})
    m.on_request("POST", "/api/checkout", 12000.0, TimeoutError("slow"), {"expect": "approved"})
    m.on_request("GET", "/api/products", 7.0, None, {}, response=None, url="http://x")

    assert value("locust_requests_total", {**checkout, "outcome": "success"}) == 1
    assert value("locust_requests_total", {**checkout, "outcome": "declined"}) == 1
    assert value("locust_requests_total", {**checkout, "outcome": "failure"}) == 1
    assert value("locust_failures_total", checkout) == 1
    assert value("locust_response_time_seconds_bucket", {**checkout, "le": "0.005"}) == 1
    assert value("locust_response_time_seconds_bucket", {**checkout, "le": "0.05"}) == 2
    assert value("locust_response_time_seconds_bucket", {**checkout, "le": "10.0"}) == 2
    assert value("locust_response_time_seconds_count", checkout) == 3
    products = {"method": "GET", "name": "/api/products"}
    assert value("locust_requests_total", {**products, "outcome": "success"}) == 1
    assert value("locust_failures_total", products) == 0
    assert b"locust_users" in m.render()


def test_master_serves_the_sum_of_its_workers_counts() -> None:
    from loadtest.prometheus_exporter import LocustMetrics

    workers = [LocustMetrics(process=False), LocustMetrics(process=False)]
    master = LocustMetrics(process=False)
    master.declare("GET", "/api/products")
    workers[0].on_request("GET", "/api/products", 20.0, None, {})
    workers[1].on_request("GET", "/api/products", 700.0, None, {})
    workers[1].on_request("GET", "/api/products", 5.0, ConnectionError("reset"), {})
    for _round in range(2):  # reports are cumulative: a repeated report must not double count
        for i, worker in enumerate(workers):
            data: dict[str, Any] = {}
            worker.report(client_id=f"w{i}", data=data)
            master.on_worker_report(client_id=f"w{i}", data=json.loads(json.dumps(data)))
    value = master.registry.get_sample_value
    products = {"method": "GET", "name": "/api/products"}
    assert value("locust_requests_total", {**products, "outcome": "success"}) == 2
    assert value("locust_requests_total", {**products, "outcome": "failure"}) == 1
    assert value("locust_failures_total", products) == 1
    assert value("locust_response_time_seconds_bucket", {**products, "le": "0.025"}) == 2
    assert value("locust_response_time_seconds_bucket", {**products, "le": "1.0"}) == 3
    assert value("locust_response_time_seconds_sum", products) == pytest.approx(0.725)
    master.on_worker_report(client_id="w9", data={"stats": []})  # a report without our key
    assert value("locust_response_time_seconds_count", products) == 3


def test_exporter_buckets_match_the_services() -> None:
    """Client and server latency of one route must be comparable bucket for bucket."""
    from loadtest.prometheus_exporter import BUCKETS
    from services.kit.metrics import LATENCY_BUCKETS

    assert BUCKETS == LATENCY_BUCKETS


def test_exporter_address_from_env() -> None:
    from loadtest.prometheus_exporter import metrics_address

    assert metrics_address({}) == ("127.0.0.1", 8090)
    assert metrics_address({"LOCUST_METRICS_PORT": "0", "LOCUST_METRICS_HOST": "0.0.0.0"}) == (
        "0.0.0.0",
        0,
    )
    assert metrics_address({"LOCUST_METRICS_PORT": "off"}) is None
    with pytest.raises(ValueError):
        metrics_address({"LOCUST_METRICS_PORT": "70000"})


# ---------------------------------------------------------------------------------------------
# integration: real services (uvicorn processes) and a real Locust process, all on 127.0.0.1

from services.topology import SERVICES  # noqa: E402  (start order: leaves first)
from tests.support import SECRET_ENV  # noqa: E402

ROUTES = {
    ("POST", "/api/login"),
    ("GET", "/api/products"),
    ("POST", "/api/checkout"),
    ("GET", "/api/orders/{order_id}"),
}


def poll(what: str, check: Any, timeout: float, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns something truthy; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            break
        time.sleep(interval)  # pacing between polls, not synchronisation
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group we created, then SIGKILL; never anything we did not start."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env.update(extra)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The five services as uvicorn processes; each socket is bound here and handed over."""
    tmp = tmp_path_factory.mktemp("lab")
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    logs: list[Any] = []
    try:
        for name in SERVICES:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.set_inheritable(True)
            urls[name] = f"http://127.0.0.1:{sock.getsockname()[1]}"
            env = child_env(
                **SECRET_ENV,  # the services refuse the shipped secrets (docs/security.md)
                DATA_DIR=str(tmp / "data"),
                SPAN_FILE=str(tmp / f"{name}.spans.jsonl"),
                LOG_LEVEL="warning",
                **{f"{peer.upper()}_URL": url for peer, url in urls.items() if peer != name},
            )
            log_file = open(tmp / f"{name}.log", "wb")  # closed in finally
            logs.append(log_file)
            cmd = [sys.executable, "-m", "uvicorn", f"services.{name}.main:create_app"]
            cmd += ["--factory", "--fd", str(sock.fileno()), "--no-access-log"]
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    pass_fds=(sock.fileno(),),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            sock.close()  # the child holds its own copy of the listening socket
        with httpx.Client(trust_env=False, timeout=2.0) as client:

            def ready(name: str) -> bool:
                proc = procs[SERVICES.index(name)]
                if proc.poll() is not None:
                    log = (tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{log}")
                try:
                    return client.get(f"{urls[name]}/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            for name in SERVICES:
                poll(f"{name} /readyz", lambda name=name: ready(name), timeout=60)
        yield urls
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for log_file in logs:
            log_file.close()


def locust_cmd(*files: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", ",".join(f"loadtest/{f}" for f in files)]


def scrape_requests_total(client: httpx.Client, url: str) -> float | None:
    """Sum of locust_requests_total on one scrape, or None when the page is not up (yet)."""
    try:
        text = client.get(url).text
    except httpx.HTTPError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("locust_requests_total{")
    )


def wait_for_rising_requests(
    client: httpx.Client, url: str, what: str, *, first_timeout: float, rise_timeout: float
) -> float:
    """Poll until the exporter counts requests, then until the count rises; return the first."""
    first = poll(
        f"{what} > 0",
        lambda: (
            (scrape_requests_total(client, url) or 0) > 0 and scrape_requests_total(client, url)
        ),
        timeout=first_timeout,
    )
    poll(
        f"{what} to rise",
        lambda: (scrape_requests_total(client, url) or 0) > first,
        timeout=rise_timeout,
    )
    return first


DECLINED = 'locust_requests_total{method="POST",name="/api/checkout",outcome="declined"}'


def scrape_sample(client: httpx.Client, url: str, series: str) -> float:
    """Value of one exact series on one scrape; -1 when the page or the series is missing."""
    try:
        text = client.get(url).text
    except httpx.HTTPError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def read_stats_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as fh:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(fh)}


@pytest.mark.integration
def test_headless_shape_run_against_the_real_services(lab: dict[str, str], tmp_path: Path) -> None:
    port_file = tmp_path / "metrics.port"
    env = child_env(
        LOCUST_SHAPE_DURATION="15",  # the steady shape, squeezed from 10 min to 15 s
        LOCUST_SHAPE_USERS="5",
        LOCUST_WAIT_MIN="0.05",
        LOCUST_WAIT_MAX="0.2",
        LOCUST_DECLINE_RATE="0.3",  # enough declines in a short run to see them counted
        LOCUST_METRICS_PORT="0",
        LOCUST_METRICS_PORT_FILE=str(port_file),
    )
    cmd = locust_cmd("locustfile.py", "shapes/steady.py")
    cmd += ["--headless", "--host", lab["gateway"], "--only-summary"]
    cmd += ["--csv", str(tmp_path / "run"), "--html", str(tmp_path / "report.html")]
    cmd += ["--json-file", str(tmp_path / "stats")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = open(tmp_path / "locust.log", "wb")  # closed in finally
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        port = int(poll("the exporter's port file", lambda: _read(port_file), timeout=30))
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            wait_for_rising_requests(
                client, metrics_url, "locust_requests_total", first_timeout=20, rise_timeout=10
            )
            # a declined test card: a success for Locust, a separate outcome for Prometheus
            poll(
                "a declined checkout on /metrics",
                lambda: scrape_sample(client, metrics_url, DECLINED) > 0,
                timeout=20,
            )
        rc = proc.wait(timeout=90)
    finally:
        stop_process(proc)
        out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = (tmp_path / "locust.log").read_text(errors="replace")

    stats = read_stats_csv(tmp_path / "run_stats.csv")
    failures = (tmp_path / "run_failures.csv").read_text()
    assert rc == 0, f"locust exit {rc}; failures:\n{failures}\n{log[-3000:]}"
    assert "Shape test completed" in log  # the steady shape ran and ended the run
    assert set(stats) - {("", "Aggregated")} == ROUTES  # named by route template only
    assert int(stats[("POST", "/api/checkout")]["Request Count"]) > 0
    for route in ROUTES:
        assert int(stats[route]["Failure Count"]) == 0, failures
    assert int(stats[("GET", "/api/orders/{order_id}")]["Request Count"]) > 0
    assert (tmp_path / "report.html").stat().st_size > 0
    assert json.loads((tmp_path / "stats.json").read_text())

    assert "checkout outcomes: " in log and "declined=" in log

    requests = int(stats[("", "Aggregated")]["Request Count"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    per_1k = cpu / requests * 1000
    print(f"\nLocust: {requests} requests, {cpu:.2f} CPU s incl. start-up, {per_1k:.2f} s/1k")


@pytest.mark.integration
def test_web_ui_serves_stats_and_metrics(lab: dict[str, str], tmp_path: Path) -> None:
    port_file = tmp_path / "metrics.port"
    env = child_env(
        LOCUST_WAIT_MIN="0.1",
        LOCUST_WAIT_MAX="0.3",
        LOCUST_METRICS_PORT="0",
        LOCUST_METRICS_PORT_FILE=str(port_file),
    )
    cmd = locust_cmd("locustfile.py")
    cmd += ["--host", lab["gateway"], "--web-host", "127.0.0.1", "--web-port", "0"]
    cmd += ["--autostart", "--autoquit", "0", "-u", "2", "-r", "2", "-t", "8s"]
    out = open(tmp_path / "locust.log", "wb")  # closed in finally
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        metrics_port = int(poll("the exporter's port file", lambda: _read(port_file), timeout=30))
        web_port = poll(
            "the web UI's port",
            lambda: next(iter(_listening(proc.pid) - {metrics_port}), None),
            timeout=30,
        )
        web = f"http://127.0.0.1:{web_port}"
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            assert client.get(f"{web}/").status_code == 200
            poll(
                "requests on the web UI's /metrics",
                lambda: (scrape_requests_total(client, f"{web}/metrics") or 0) > 0,
                timeout=20,
            )

            def stat_names() -> set[str] | None:
                rows = client.get(f"{web}/stats/requests").json()["stats"]
                names = {row["name"] for row in rows}
                return names if "/api/products" in names else None

            names = poll("/api/products in the web UI's stats", stat_names, timeout=20)
        rc = proc.wait(timeout=60)
    finally:
        stop_process(proc)
        out.close()
    log = (tmp_path / "locust.log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert names <= {name for _, name in ROUTES} | {"Aggregated"}


@pytest.mark.integration
def test_distributed_master_exports_its_workers_requests(
    lab: dict[str, str], tmp_path: Path
) -> None:
    port_file = tmp_path / "metrics.port"
    env = child_env(
        LOCUST_WAIT_MIN="0.1",
        LOCUST_WAIT_MAX="0.3",
        LOCUST_METRICS_PORT="0",
        LOCUST_METRICS_PORT_FILE=str(port_file),
    )
    master_cmd = [*locust_cmd("locustfile.py"), "--master", "--headless", "--host", lab["gateway"]]
    master_cmd += ["--master-bind-host", "127.0.0.1", "--master-bind-port", "0"]
    master_cmd += ["--expect-workers", "1", "-u", "3", "-r", "3", "-t", "12s", "--only-summary"]
    master_log = open(tmp_path / "master.log", "wb")  # closed in finally
    worker_log = open(tmp_path / "worker.log", "wb")  # closed in finally
    procs: list[subprocess.Popen] = []
    try:
        master = subprocess.Popen(
            master_cmd,
            cwd=ROOT,
            env=env,
            stdout=master_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(master)
        metrics_port = int(poll("the exporter's port file", lambda: _read(port_file), timeout=30))
        master_port = poll(
            "the master's worker port",
            lambda: next(iter(_listening(master.pid) - {metrics_port}), None),
            timeout=30,
        )
        worker_cmd = [*locust_cmd("locustfile.py"), "--worker", "--host", lab["gateway"]]
        worker_cmd += ["--master-host", "127.0.0.1", "--master-port", str(master_port)]
        procs.append(
            subprocess.Popen(
                worker_cmd,
                cwd=ROOT,
                env=child_env(LOCUST_WAIT_MIN="0.1", LOCUST_WAIT_MAX="0.3"),
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            wait_for_rising_requests(
                client,
                metrics_url,
                "the master's locust_requests_total",
                first_timeout=30,
                rise_timeout=15,
            )
            users = scrape_sample(client, metrics_url, "locust_users")
        rc = master.wait(timeout=60)
        procs[1].wait(timeout=30)
    finally:
        for proc in procs:
            stop_process(proc)
        master_log.close()
        worker_log.close()
    log = (tmp_path / "master.log").read_text(errors="replace")
    assert rc == 0, log[-3000:] + (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert users == 3  # the whole run's users, as the master counts them


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _listening(pid: int) -> set[int]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr}
