"""`labctl` (run as `python -m labctl`) as a user runs it: clear errors, non-zero exits,
nothing left running."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from labctl.config import COMPONENTS, DEFAULT_PORTS, LabError, Ports, port_env_name
from labctl.native import procs
from labctl.native.binaries import ENV_NAMES, INSTALL_HINT, ensure_binaries, find_binaries
from labctl.native.lab import NativeLab
from labctl.native.receiver import AlertStore, _Server, read_alerts

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "native-lab.md").read_text()


def lab_env(runtime: Path, **extra: str) -> dict[str, str]:
    """Every port 0 (OS-chosen) so a test never collides with a lab on the default ports."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PORT")}
    env.update({port_env_name(c): "0" for c in COMPONENTS})
    env.update(LAB_DIR=str(runtime), LAB_AUTO_INSTALL="0", **extra)
    return env


def labctl(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labctl", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def assert_nothing_running(runtime: Path) -> None:
    assert procs.marked_processes(str(runtime.resolve())) == []
    state = runtime / "state.json"
    if state.exists():
        assert json.loads(state.read_text())["components"] == {}


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A port that is really taken: bound and listening in this process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("GATEWAY_PORT", "abc", "GATEWAY_PORT='abc' is not a port number"),
        ("PROMETHEUS_PORT", "70000", "PROMETHEUS_PORT=70000 is out of range"),
        ("LOCUST_PORT", "-1", "LOCUST_PORT=-1 is out of range"),
        ("AUTH_PORT", "8.5", "AUTH_PORT='8.5' is not a port number"),
    ],
)
def test_bad_port_value_is_a_clear_error(
    tmp_path: Path, var: str, value: str, message: str
) -> None:
    result = labctl(lab_env(tmp_path, **{var: value}), "up", "--mode", "native")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_running(tmp_path)


def test_two_components_on_one_port_is_a_clear_error(tmp_path: Path) -> None:
    env = lab_env(tmp_path, ORDER_PORT="18002", PAYMENT_PORT="18002")
    result = labctl(env, "up", "--mode", "native")
    assert result.returncode == 1
    assert "PAYMENT_PORT and ORDER_PORT are both 18002" in result.stderr
    assert_nothing_running(tmp_path)


@pytest.mark.parametrize("component", ["gateway", "prometheus", "locust"])
def test_port_in_use_names_port_and_component(
    tmp_path: Path, listening_socket: socket.socket, component: str
) -> None:
    port = listening_socket.getsockname()[1]
    env = lab_env(tmp_path, **{port_env_name(component): str(port)})
    result = labctl(env, "up", "--mode", "native")
    assert result.returncode == 2
    assert f"port {port} for {component} is already in use" in result.stderr
    assert port_env_name(component) in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_running(tmp_path)


def test_explicit_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    env = lab_env(tmp_path, PROMETHEUS_BIN=str(tmp_path / "no" / "prometheus"))
    result = labctl(env, "up", "--mode", "native")
    assert result.returncode == 1
    assert "PROMETHEUS_BIN=" in result.stderr and "no such executable" in result.stderr
    assert_nothing_running(tmp_path)


@pytest.mark.integration
def test_component_dying_at_start_rolls_back_the_others(tmp_path: Path) -> None:
    """Prometheus 'binary' that exits at once: the services already started must be stopped."""
    fake = tmp_path / "bin" / "prometheus"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bad flag' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    runtime = tmp_path / "lab"
    result = labctl(lab_env(runtime, PROMETHEUS_BIN=str(fake)), "up", "--mode", "native")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "prometheus exited with code 3 while starting" in result.stderr
    assert "bad flag" in result.stderr  # the log tail says why
    assert "Stopping what this run started" in result.stdout
    assert_nothing_running(runtime)


def test_without_prometheus_on_path_it_says_how_to_install(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "LAB_AUTO_INSTALL": "0"}
    assert find_binaries(env).prometheus is None
    said: list[str] = []
    found = ensure_binaries(env, out=said.append)
    assert found.prometheus is None and found.alertmanager is None
    assert said == [INSTALL_HINT]
    assert "apt-get install prometheus prometheus-alertmanager" in INSTALL_HINT


def test_debian_alertmanager_binary_name_is_found(tmp_path: Path) -> None:
    for name in ("prometheus", "prometheus-alertmanager"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    found = find_binaries({"PATH": str(tmp_path)})
    assert found.prometheus == str(tmp_path / "prometheus")
    assert found.alertmanager == str(tmp_path / "prometheus-alertmanager")


def test_ports_from_env() -> None:
    assert Ports.from_env({}).values == DEFAULT_PORTS
    assert Ports.from_env({"GATEWAY_PORT": " 18000 "})["gateway"] == 18000
    with pytest.raises(LabError, match="RECEIVER_PORT='0x10' is not a port number"):
        Ports.from_env({"RECEIVER_PORT": "0x10"})


# ---------------------------------------------------------------- receiver port


def test_receiver_port_is_substituted_into_a_copy_of_thealertmanager_config(
    tmp_path: Path,
) -> None:
    source = tmp_path / "alertmanager.yml"
    source.write_text(
        "receivers:\n"
        "  - name: page\n    webhook_configs: [{url: 'http://127.0.0.1:9095/hook/page'}]\n"
        "  - name: ticket\n    webhook_configs: [{url: 'http://localhost:9095/hook/ticket'}]\n"
    )
    lab = NativeLab(tmp_path / "lab", Ports.any_free(), alertmanager_config=source, out=print)
    assert lab.alertmanager_config(9095) == source  # default port: the file itself
    rendered = lab.alertmanager_config(19123)
    assert rendered.parent == tmp_path / "lab" / "alertmanager"
    text = rendered.read_text()
    assert "http://127.0.0.1:19123/hook/page" in text
    assert "http://localhost:19123/hook/ticket" in text
    assert ":9095/" not in text


# ----------------------------------------------------------------------- receiver


def test_receiver_records_and_lists_notifications(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    server = _Server(("127.0.0.1", 0), AlertStore(path))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with httpx.Client(base_url=base, timeout=5, trust_env=False) as client:
            note = {"status": "firing", "alerts": [{"labels": {"alertname": "CheckoutErrors"}}]}
            assert client.post("/hook/page", json=note).status_code == 200
            assert client.post("/hook/ticket", json={"status": "resolved"}).status_code == 200
            assert client.post("/hook/page", content=b"not json").status_code == 400
            assert client.post("/elsewhere", json=note).status_code == 404
            pages = client.get("/alerts", params={"channel": "page"}).json()
            everything = client.get("/alerts").json()
            assert client.get("/healthz").status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert [p["alertnames"] for p in pages] == [["CheckoutErrors"]]
    assert pages[0]["notification"] == note
    assert [r["channel"] for r in everything] == ["page", "ticket"]
    assert read_alerts(path, since=everything[1]["received_unix"])[0]["channel"] == "ticket"


# -------------------------------------------------------------------- no lab running


def test_status_and_down_without_a_lab(tmp_path: Path) -> None:
    env = lab_env(tmp_path)
    status = labctl(env, "status", "--mode", "native")
    assert status.returncode == 3
    assert "not running" in status.stdout
    down = labctl(env, "down", "--mode", "native")
    assert down.returncode == 0
    assert "Nothing of the native lab was running" in down.stdout


# ------------------------------------------------------------------ the whole round


@pytest.mark.integration
def test_up_twice_status_down(tmp_path: Path) -> None:
    """The user's path: URL table, idempotent second up, status, down leaves nothing."""
    env = lab_env(tmp_path, ADMIN_TOKEN="test-admin-token-of-at-least-32-bytes")
    try:
        first = labctl(env, "up", "--mode", "native", "--no-load")
        assert first.returncode == 0, first.stdout + first.stderr
        for name in ("gateway", "prometheus", "alertmanager", "receiver"):
            assert any(
                line.startswith(name) and "ready" in line and "http://127.0.0.1:" in line
                for line in first.stdout.splitlines()
            ), (name, first.stdout)
        assert "locust        off (load off)" in first.stdout
        assert "ADMIN_TOKEN from your environment" in first.stdout  # not printed back
        assert "test-admin-token-of-at-least-32-bytes" not in first.stdout

        second = labctl(env, "up", "--mode", "native", "--no-load")
        assert second.returncode == 0, second.stderr
        assert "The lab is already running." in second.stdout
        assert "started (pid" not in second.stdout

        status = labctl(env, "status", "--mode", "native")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" ready ") == len(COMPONENTS) - 1
    finally:
        down = labctl(env, "down", "--mode", "native")
    assert down.returncode == 0, down.stderr
    assert "Stopped" in down.stdout
    assert_nothing_running(tmp_path)
    assert (tmp_path / "logs" / "gateway.log").exists()  # down keeps logs and data


def test_every_variable_labctl_reads_is_documented() -> None:
    source = "\n".join(
        p.read_text() for p in (REPO / "labctl").rglob("*.py") if p.parent.name != "slo"
    )
    read = set(re.findall(r"""env(?:iron)?\.get\(\s*["']([A-Z][A-Z0-9_]+)["']""", source))
    read |= set(ENV_NAMES.values()) | {port_env_name(c) for c in COMPONENTS}
    read -= {"PATH"}
    services = (REPO / "docs" / "configuration.md").read_text()  # service settings live there
    table_row = r"^\| (?:\S+ \| \S+ \| )?`([A-Z][A-Z0-9_]+)` \|"
    documented = set(re.findall(table_row, DOC + services, re.M))
    assert {"LAB_DIR", "ADMIN_TOKEN", "GATEWAY_PORT"} <= read
    assert read - documented == set(), "variables missing from docs/native-lab.md"


def test_the_mode_is_decided_in_shell_before_any_python(tmp_path: Path) -> None:
    """`make up` asks deploy/lab.sh first: compose mode must not need uv or Python."""
    script = REPO / "deploy" / "lab.sh"

    def mode(**env: str) -> subprocess.CompletedProcess:
        full = {"PATH": os.environ["PATH"], "LAB_DIR": str(tmp_path / "lab"), **env}
        return subprocess.run(["bash", str(script), "mode"], env=full, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip

    assert mode(MODE="compose").stdout.strip() == "compose"
    assert mode(MODE="native").stdout.strip() == "native"
    bad = mode(MODE="kubernetes")
    assert bad.returncode == 2 and "MODE must be auto, native or compose" in bad.stderr
    # auto on this machine: the docker client answers, no engine behind it -> native
    assert mode(MODE="auto").stdout.strip() == "native"
    # auto with a native lab running (a live pid recorded) -> native, whatever Docker says
    pids = tmp_path / "lab" / "pids"
    pids.mkdir(parents=True)
    (pids / "gateway.pid").write_text(f"{os.getpid()}\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"  # a docker whose engine answers
    docker.write_text("#!/bin/sh\nexit 0\n")
    docker.chmod(0o755)
    path = f"{fake_bin}:{os.environ['PATH']}"
    assert mode(MODE="auto", PATH=path).stdout.strip() == "native"
    (pids / "gateway.pid").unlink()
    assert mode(MODE="auto", PATH=path).stdout.strip() == "compose"


def test_stopping_a_process_that_stays_a_zombie_of_another_parent_is_not_an_error() -> None:
    """A service a drill runner restarted is the runner's child: killed, it stays a zombie until
    the runner reaps it. `make down` found one and failed with "survived SIGKILL"."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; p = subprocess.Popen(['sleep', '60']);"
         " print(p.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        procs.stop([child], grace=1)  # the parent never reaps it
        assert child.status() == psutil.STATUS_ZOMBIE
        assert not procs.is_running(child)
    finally:
        parent.kill()
        parent.wait(10)
