"""The compose lab, checked without a Docker engine.

Debian's docker-compose 1.29 validates and renders docker-compose.yml (with .env) offline; the
rest reads the rendered file and the configs it mounts, and cross-checks them against the
native lab's files, so that compose and native cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from services import topology
from services.fault_spec import DEFAULT_ADMIN_TOKEN

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {name: svc.port for name, svc in topology.SERVICES_BY_NAME.items()}  # the one source
# The sum of every container's limit (a cap, not what the lab uses: ~660 MB natively,
# docs/benchmarks.md); the five services' limits are services/topology.toml's.
MEMORY_BUDGET = 5120 * 2**20
LOCAL_IMAGE = "${TRIAGELAB_IMAGE}"  # built once from deploy/docker/Dockerfile
PYTHON_SERVICES = {*SERVICES, "receiver", "locust", "locust-worker"}


def _compose(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed: `apt-get install docker-compose` (Debian's 1.29 "
            "validates a compose file without a Docker engine; .ci/run installs it)"
        )
    return subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    """docker-compose.yml as Compose sees it: anchors merged, ${VARS} filled from .env."""
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(rendered) -> dict:
    return rendered["services"]


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _bytes(size: str | int) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(size).strip().lower())
    assert match, f"unreadable memory size {size!r}"
    return int(float(match[1]) * 1024 ** "bkmg".index(match[2] or "b"))


def _memory_limit(service: dict) -> int | None:
    if "mem_limit" in service:
        return _bytes(service["mem_limit"])
    limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    return _bytes(limit) if limit else None


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path (relative to the repo) or volume name."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        path = Path(source)
        if path.is_absolute() and path.is_relative_to(ROOT):
            source = path.relative_to(ROOT).as_posix()
        out[target] = source
    return out


def _port_in(text: str) -> int:
    match = re.search(r"127\.0\.0\.1[:', ]+(\d+)", text)
    assert match, f"no 127.0.0.1 port in {text!r}"
    return int(match[1])


def test_compose_file_is_valid_for_docker_compose():
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_whole_lab_is_there(services):
    expected = set(SERVICES) | {
        "prometheus",
        "alertmanager",
        "receiver",
        "grafana",
        "loki",
        "jaeger",
        "alloy",
        "locust",
    }
    assert expected <= set(services), expected - set(services)


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and len(check["test"]) > 1, name


def test_every_service_has_a_memory_limit_and_all_fit_the_budget(services):
    limits = {name: _memory_limit(service) for name, service in services.items()}
    missing = [name for name, limit in limits.items() if not limit]
    assert not missing, f"no memory limit: {missing}"
    total = sum(limits.values())
    assert total <= MEMORY_BUDGET, (
        f"memory limits add up to {total / 2**20:.0f} MiB > {MEMORY_BUDGET // 2**20} MiB"
    )


def test_the_services_memory_limits_are_the_topologys(services):
    """One place for each service's limit: compose gives what process_memory_limit_bytes says."""
    for name, svc in topology.SERVICES_BY_NAME.items():
        assert svc.memory_limit_mb > 0, f"services/topology.toml: {name} has no memory_limit_mb"
        assert _memory_limit(services[name]) == svc.memory_limit_mb * 2**20, (
            f"docker-compose.yml's mem_limit of {name} differs from services/topology.toml's "
            f"memory_limit_mb ({svc.memory_limit_mb})"
        )


def test_memory_budget_in_the_docs_matches_the_compose_file(services):
    doc = (ROOT / "docs" / "compose.md").read_text()
    for name, service in services.items():
        mib = _memory_limit(service) // 2**20
        assert re.search(rf"\|\s*`?{re.escape(name)}`?\s*\|[^\n]*\|\s*{mib}\s*MiB", doc), (
            f"docs/compose.md's memory table does not say {name} = {mib} MiB"
        )
    total = sum(_memory_limit(s) for s in services.values()) // 2**20
    assert f"{total} MiB" in doc


def test_depends_on_waits_for_healthy_dependencies(services):
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has none"


def test_images_are_pinned_in_dotenv(services, dotenv):
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, service in raw.items():
        image = service["image"]
        match = re.fullmatch(r"\$\{(\w+)\}", image)
        assert match, f"{name}: image {image!r} must come from .env as ${{VAR}}"
        assert match[1] in dotenv, f"{name}: {match[1]} is not in .env"
    for key, value in dotenv.items():
        if key.endswith("_IMAGE"):
            repo, sep, tag = value.rpartition(":")
            assert sep and repo and tag, f"{key}={value} has no tag"
            assert tag != "latest" and re.search(r"\d", tag), f"{key}={value} is not pinned"


def test_dockerfile_is_multistage_uv_non_root_and_uses_the_pinned_images(dotenv):
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    assert defaults["PYTHON_IMAGE"] == dotenv["PYTHON_IMAGE"]
    assert defaults["UV_IMAGE"] == dotenv["UV_IMAGE"]
    assert dotenv["UV_IMAGE"].startswith("ghcr.io/astral-sh/uv:")
    assert "-slim" in dotenv["PYTHON_IMAGE"] and ":3.11" in dotenv["PYTHON_IMAGE"]
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3  # uv, build, runtime
    assert re.search(r"^COPY --from=uv /uv ", text, re.M)
    assert "uv sync --frozen --no-dev" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    runtime = text[text.rindex("\nFROM ") :]
    assert "/bin/uv" not in runtime and "COPY --from=uv" not in runtime, "uv must not ship"


def test_dockerignore_keeps_secrets_and_bulk_out_but_the_project_in():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", ".env", "var"):
        assert path in ignored
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    packages = packaged["targets"]["wheel"]["packages"]
    assert set(packages) == {"services", "loadtest", "labctl"}
    for needed in ("pyproject.toml", "uv.lock", "README.md", *packages):
        assert needed not in ignored  # the image's `uv sync` builds the wheel from them


def test_services_run_the_documented_command_on_their_port(services):
    for name, port in SERVICES.items():
        service = services[name]
        assert service["image"].startswith("triagelab/service:")
        assert service["command"] == [
            "python",
            "-m",
            "uvicorn",
            f"services.{name}.main:create_app",
            "--factory",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--no-proxy-headers",  # no X-Forwarded-For believed (docs/security.md)
        ]
        assert _port_in(" ".join(service["healthcheck"]["test"])) == port
        env = service["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        for peer in topology.CALLED:
            assert env[f"{peer.upper()}_URL"] == f"http://{peer}:{SERVICES[peer]}"
        assert env["ADMIN_TOKEN"] == DEFAULT_ADMIN_TOKEN  # ${ADMIN_TOKEN:-<default>} unset


def test_each_service_waits_for_those_it_calls_as_the_topology_says(services):
    for name in SERVICES:
        waits_for = set(services[name].get("depends_on", {})) & set(SERVICES)
        assert waits_for == set(topology.peers(name)), name


def test_one_network_and_named_volumes_for_data(rendered, services):
    assert list(rendered["networks"]) == ["lab"]
    for name, service in services.items():
        if "network_mode" in service:
            assert service["network_mode"] == "service:alertmanager", name
            continue
        assert list(service["networks"]) == ["lab"], name
    volumes = set(rendered["volumes"])
    for name, path in {
        "prometheus": "/prometheus",
        "alertmanager": "/alertmanager",
        "loki": "/loki",
        "grafana": "/var/lib/grafana",
    }.items():
        assert _mounts(services[name]).get(path) in volumes, f"{name} keeps {path} in a volume"


def test_published_ports_are_local_only(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond localhost"


def test_prometheus_and_alertmanager_use_the_native_labs_config_files(services):
    prom = _mounts(services["prometheus"])
    assert prom["/etc/prometheus/prometheus.yml"] == "deploy/prometheus/prometheus.yml"
    assert prom["/etc/prometheus/rules"] == "deploy/prometheus/rules"
    assert prom["/etc/prometheus/slo-profiles"] == "deploy/prometheus/slo-profiles"
    assert prom["/etc/prometheus/targets"] == "deploy/prometheus/targets-compose"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    am = _mounts(services["alertmanager"])
    assert am["/etc/alertmanager/alertmanager.yml"] == "deploy/alertmanager/alertmanager.yml"
    start = " ".join(services["alertmanager"]["command"])  # rendered from that file
    assert "/etc/alertmanager/alertmanager.yml > /tmp/alertmanager.yml" in start
    for path in ("deploy/prometheus/prometheus.yml", "deploy/alertmanager/alertmanager.yml"):
        assert (ROOT / path).is_file(), f"{path} is mounted but missing"
    assert list((ROOT / "deploy/prometheus/rules").glob("*.yml")), "no rule files to mount"


def test_compose_scrape_targets_name_compose_services_and_their_ports(services):
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    target_files = {
        Path(f).name
        for job in config["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    }
    for name in target_files:
        path = ROOT / "deploy/prometheus/targets-compose" / name
        assert path.is_file(), f"prometheus.yml reads targets/{name}; targets-compose lacks it"
        for group in json.loads(path.read_text()):
            for target in group["targets"]:
                host, _, port = target.rpartition(":")
                if host == "localhost":  # Prometheus scraping itself
                    continue
                assert host in services, f"{name}: {host} is not a compose service"
                if host in SERVICES:
                    assert int(port) == SERVICES[host]
                    assert group["labels"] == {"job": host, "service": host}


def test_the_python_image_is_built_once_and_tagged_with_the_project_version(services, dotenv):
    """Seven services building one tag collide in compose's parallel builds on a first run."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    python = {n for n, s in raw.items() if s["image"] == LOCAL_IMAGE}
    assert python == PYTHON_SERVICES
    builders = [n for n in python if "build" in raw[n]]
    assert builders == ["auth"], builders
    for name in python - {"auth"}:
        assert raw[name].get("pull_policy") == "never", f"{name} would try to pull a local tag"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert dotenv["TRIAGELAB_IMAGE"] == f"triagelab/service:{version}"


def test_alertmanager_webhooks_reach_the_receiver_in_its_own_container(services):
    receiver = services["receiver"]
    assert "network_mode" not in receiver and receiver["networks"] == {"lab": None}
    command = receiver["command"]
    port = int(command[command.index("--port") + 1])
    # alertmanager's start rewrites the shared config's loopback URL to the receiver's name
    start = " ".join(services["alertmanager"]["command"])
    assert f"s#http://127.0.0.1:{port}/#http://receiver:{port}/#" in start
    assert "--config.file=/tmp/alertmanager.yml" in start
    am = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    urls = [
        hook["url"]
        for rec in am.get("receivers", [])
        for hook in rec.get("webhook_configs", [])
        if "url" in hook
    ]
    assert urls, "alertmanager.yml has no webhook receiver"
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port == port, url
        assert parts.path.startswith("/hook/"), url


def test_jaeger_receives_otlp_and_its_pipeline_is_complete(services):
    config = yaml.safe_load((ROOT / "deploy/jaeger/config.yaml").read_text())
    service = config["service"]
    for ext in service["extensions"]:
        assert ext in config["extensions"], ext
    for pipeline in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], component
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    storage = config["extensions"]["jaeger_query"]["storage"]["traces"]
    assert "memory" in config["extensions"]["jaeger_storage"]["backends"][storage]
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == storage
    health = config["extensions"]["healthcheckv2"]["http"]["endpoint"]
    assert _port_in(" ".join(services["jaeger"]["healthcheck"]["test"])) == int(health[-5:])
    assert _mounts(services["jaeger"])["/etc/jaeger/config.yaml"] == "deploy/jaeger/config.yaml"


def test_loki_is_single_binary_tsdb_v13_on_the_filesystem(services):
    config = yaml.safe_load((ROOT / "deploy/loki/config.yaml").read_text())
    (schema,) = config["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == (
        "tsdb",
        "v13",
        "filesystem",
    )
    assert config["common"]["path_prefix"] == "/loki"
    assert _mounts(services["loki"])["/loki"] == "loki-data"
    port = config["server"]["http_listen_port"]
    assert _port_in(" ".join(services["loki"]["healthcheck"]["test"])) == port


def test_alloy_ships_the_json_logs_of_this_project_with_service_and_level(services, dotenv):
    text = (ROOT / "deploy/alloy/config.alloy").read_text()
    assert text.count("{") == text.count("}")
    for component in (
        "discovery.docker",
        "discovery.relabel",
        "loki.source.docker",
        "loki.process",
        "loki.write",
        "stage.json",
        "stage.labels",
    ):
        assert component in text, component
    assert f"com.docker.compose.project={dotenv['COMPOSE_PROJECT_NAME']}" in text
    assert "http://loki:3100/loki/api/v1/push" in text
    # The JSON branch covers exactly the containers that log JSON lines (kit + receiver).
    json_branch = re.search(r'selector = "\{service=~\\"([^\\]+)\\"\}"', text)[1]
    assert set(json_branch.split("|")) == set(SERVICES) | {"receiver"}
    assert set(json_branch.split("|")) <= set(services)
    assert re.search(r"service\s*=\s*\"\",\s*\n\s*level\s*=\s*\"\"", text)
    mounts = _mounts(services["alloy"])
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    assert mounts["/etc/alloy/config.alloy"] == "deploy/alloy/config.alloy"
