"""The lab on Kubernetes (deploy/k8s/), checked without a cluster.

`kubectl kustomize` renders both overlays; every object is validated against the Kubernetes
OpenAPI schemas that kubernetes-validate ships (offline); the rest reads the rendered objects:
probes, limits and security contexts, the ConfigMaps against the repository's files (so the
cluster runs exactly the rules, alerting config and dashboards of compose and native), the
trainee overlay's namespace and names, the Prometheus config through promtool, and the
scripts that make credentials and trainee overlays. Distributed Locust (the master and worker
commands of deploy/k8s and docker-compose.yml) runs for real: a master and two workers on
127.0.0.1 against a tiny shop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labctl.config import loaded_rule_files
from labctl.drills.target import UrlLab
from services import topology
from services.kit.settings import SECRET_SETTINGS, SHIPPED_SECRETS, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("single", "trainee")
NAMESPACES = {"single": "triagelab", "trainee": "triagelab-example"}
SERVICES = {name: svc.port for name, svc in topology.SERVICES_BY_NAME.items()}
SCHEMA_VERSION = "1.32.0"  # the kubectl on the test machine; kubernetes-validate ships it
SECRET_KEYS = {"ADMIN_TOKEN", "JWT_SECRET", "INTERNAL_TOKEN", "GRAFANA_ADMIN_PASSWORD"}
SHARED_FILES = {  # ConfigMap -> the repository files it must hold, byte for byte
    "prometheus-rules": ["deploy/prometheus/rules/alerts.yml"],
    "prometheus-slo-rules": ["deploy/prometheus/slo-profiles/slo-lab.yml"],
    "alertmanager-config": ["deploy/alertmanager/alertmanager.yml"],
    "jaeger-config": ["deploy/jaeger/config.yaml"],
    "loki-config": ["deploy/loki/config.yaml"],
    "grafana-datasources": ["grafana/provisioning/datasources/datasources.yaml"],
    "grafana-dashboard-provider": ["grafana/provisioning/dashboards/triagelab.yaml"],
    "grafana-dashboards": sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "grafana/dashboards").glob("*.json")
    ),
    "prometheus-config": ["deploy/k8s/base/prometheus.yml"],
    "alloy-config": ["deploy/k8s/base/config.alloy"],
}


def require(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH (the Kubernetes tests need it)", pytrace=False)
    return path


def kustomize(path: Path) -> list[dict[str, Any]]:
    """Render one kustomization; the generators name repository files outside deploy/k8s."""
    result = subprocess.run(
        [require("kubectl"), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for overlay in OVERLAYS:
        # Credentials are per install and git-ignored: made here as a trainer would (kept if
        # they exist already).
        subprocess.run(
            [str(K8S / "new-secrets.sh"), str(K8S / "overlays" / overlay)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        out[overlay] = kustomize(K8S / "overlays" / overlay)
    return out


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def base_name(obj: dict, overlay: str) -> str:
    """The name in deploy/k8s/base: without the trainee suffix and the generator hash."""
    name = obj["metadata"]["name"]
    if overlay == "trainee" and obj["kind"] not in {"Service", "Namespace"}:
        name = re.sub(r"-example(-[a-z0-9]{10})?$", r"\1", name)
    if obj["kind"] in {"ConfigMap", "Secret"}:
        name = re.sub(r"-[a-z0-9]{10}$", "", name)
    return name


def named(objs: list[dict], kind: str, overlay: str) -> dict[str, dict]:
    return {base_name(o, overlay): o for o in by_kind(objs, kind)}


def pod_specs(objs: list[dict]) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in by_kind(objs, "Deployment")
    }


def deployment(objs: list[dict], overlay: str, name: str) -> dict:
    return named(objs, "Deployment", overlay)[name]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if str(value).endswith("m") else float(value)


def mem(value: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(value))
    assert match, value
    return int(match[1]) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[match[2]]


# ------------------------------------------------------------------------- rendering, schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_lab(rendered, overlay):
    objs = rendered[overlay]
    deployments = {base_name(o, overlay) for o in by_kind(objs, "Deployment")}
    expected = set(SERVICES) | {
        "prometheus",
        "alertmanager",
        "grafana",
        "loki",
        "jaeger",
        "alloy",
        "locust",
        "locust-worker",
    }
    assert deployments == expected
    services = {o["metadata"]["name"] for o in by_kind(objs, "Service")}
    assert services == (expected - {"alloy", "locust-worker"}) | {"receiver"}
    assert [o["metadata"]["name"] for o in by_kind(objs, "Namespace")] == [NAMESPACES[overlay]]
    assert set(named(objs, "ConfigMap", overlay)) == set(SHARED_FILES)
    assert set(named(objs, "Secret", overlay)) == {"lab-secrets"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    import kubernetes_validate

    problems = []
    for obj in rendered[overlay]:
        try:
            # strict: an unknown field (a typo such as `readinesProbe`) is an error too
            kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_the_schema_check_rejects_a_broken_object(rendered):
    """The validation above is only worth something if it can fail."""
    import kubernetes_validate

    good = json.loads(json.dumps(by_kind(rendered["single"], "Deployment")[0]))
    kubernetes_validate.validate(good, SCHEMA_VERSION, strict=True)
    typo = json.loads(json.dumps(good))
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe", {})
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["replicas"] = "one"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, SCHEMA_VERSION, strict=True)


# ------------------------------------------------------------------ probes, limits, security


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_have_readiness_and_liveness_probes_on_readyz_and_healthz(rendered, overlay):
    objs = rendered[overlay]
    for name, port in SERVICES.items():
        spec = deployment(objs, overlay, name)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, (name, probe)
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        service = named(objs, "Service", overlay)[name]
        assert service["spec"]["ports"][0]["port"] == port
        # not-ready pods keep their traffic: a drill must fail as it does in compose
        assert service["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_long_running_container_has_probes(rendered, overlay):
    for name, spec in pod_specs(rendered[overlay]).items():
        for container in spec["containers"]:
            if container["name"].startswith("locust-worker"):
                continue  # no listener: it exits when it loses its master (documented)
            assert "livenessProbe" in container and "readinessProbe" in container, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered, overlay):
    for name, spec in pod_specs(rendered[overlay]).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert set(resources.get(kind, {})) >= {"cpu", "memory"}, (name, kind)
            assert cpu(resources["requests"]["cpu"]) <= cpu(resources["limits"]["cpu"]), name
            assert mem(resources["requests"]["memory"]) <= mem(resources["limits"]["memory"])
            gomemlimit = env_of(container).get("GOMEMLIMIT")
            if gomemlimit:  # the Go garbage collector works harder below the hard limit
                assert mem(gomemlimit.replace("B", "")) < mem(resources["limits"]["memory"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_services_memory_limits_are_the_topologys(rendered, overlay):
    """One place for each service's limit: the pod's is what process_memory_limit_bytes reads."""
    for name, svc in topology.SERVICES_BY_NAME.items():
        (container,) = deployment(rendered[overlay], overlay, name)["spec"]["template"]["spec"][
            "containers"
        ]
        assert mem(container["resources"]["limits"]["memory"]) == svc.memory_limit_mb * 2**20, (
            f"{overlay}: the memory limit of {name} differs from services/topology.toml's "
            f"memory_limit_mb ({svc.memory_limit_mb})"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_non_root_read_only_without_privileges(rendered, overlay):
    for name, spec in pod_specs(rendered[overlay]).items():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            sc = container.get("securityContext", {})
            user = sc.get("runAsUser", pod.get("runAsUser"))
            # numeric: the kubelet cannot check runAsNonRoot against a user *name* (nobody)
            assert isinstance(user, int) and user > 0, (name, container["name"])
            assert sc.get("allowPrivilegeEscalation") is False, (name, container["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (name, container["name"])
            assert sc.get("capabilities") == {"drop": ["ALL"]}, (name, container["name"])
            assert "privileged" not in sc
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        # only the two components that discover pods get an API token
        wants_token = spec.get("serviceAccountName") is not None
        assert wants_token or spec.get("automountServiceAccountToken") is False, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_the_restricted_pod_security_standard(rendered, overlay):
    (namespace,) = by_kind(rendered[overlay], "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_read_only(rendered, overlay):
    objs = rendered[overlay]
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    roles = named(objs, "Role", overlay)
    assert set(roles) == {"prometheus", "alloy"}
    for role in roles.values():
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert set(rule["resources"]) <= {"pods", "pods/log"}, rule


# --------------------------------------------------------------- the services' configuration


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_get_the_settings_they_read_and_accept_the_generated_secrets(rendered, overlay):
    objs = rendered[overlay]
    (secret,) = by_kind(objs, "Secret")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == SECRET_KEYS
    fields = set(Settings.model_fields)
    for name, port in SERVICES.items():
        (container,) = deployment(objs, overlay, name)["spec"]["template"]["spec"]["containers"]
        assert container["image"].startswith("triagelab/service:")
        assert container["command"] == [
            "python", "-m", "uvicorn", f"services.{name}.main:create_app", "--factory",
            "--host", "0.0.0.0", "--port", str(port), "--no-proxy-headers",
        ]  # fmt: skip
        env = env_of(container)
        unknown = {k for k in env if k.lower() not in fields} - {"OTEL_SERVICE_NAME"}
        assert not unknown, f"{name}: not a setting of services/kit/settings.py: {unknown}"
        assert "LAB_MODE" not in env  # a cluster is not a local lab
        for peer in topology.CALLED:
            assert env[f"{peer.upper()}_URL"] == f"http://{peer}:{SERVICES[peer]}"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        for setting in SECRET_SETTINGS:
            ref = env[setting.upper()]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": setting.upper()}
        # The services' own check, on what this pod would get: no refusal to start.
        plain = {k: v for k, v in env.items() if isinstance(v, str) and k != "OTEL_SERVICE_NAME"}
        secrets = {s.upper(): values[s.upper()] for s in SECRET_SETTINGS}
        settings = Settings(**{k.lower(): v for k, v in {**plain, **secrets}.items()})
        assert settings.for_service(name).secret_problems() == []


def test_the_settings_check_would_refuse_shipped_secrets():
    """The acceptance above means something: shipped values are refused without LAB_MODE."""
    for value in SHIPPED_SECRETS:
        problems = Settings(admin_token=value, jwt_secret=value, internal_token=value)
        assert problems.secret_problems()


def test_images_are_the_ones_pinned_in_dotenv(rendered):
    dotenv = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            dotenv[key.strip()] = value.strip()
    pinned = {
        v
        for k, v in dotenv.items()
        if k.endswith("_IMAGE") and k not in {"PYTHON_IMAGE", "UV_IMAGE"}
    }
    for overlay in OVERLAYS:
        images = {
            c["image"] for spec in pod_specs(rendered[overlay]).values() for c in spec["containers"]
        }
        assert images == pinned, images ^ pinned


# -------------------------------------------------------- the repository's files, no copies


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmaps_hold_the_repository_files_byte_for_byte(rendered, overlay):
    maps = named(rendered[overlay], "ConfigMap", overlay)
    for name, files in SHARED_FILES.items():
        data = maps[name]["data"]
        assert set(data) == {Path(f).name for f in files}, name
        for rel in files:
            assert data[Path(rel).name] == (ROOT / rel).read_text(), f"{name} differs from {rel}"


def test_every_dashboard_is_provisioned(rendered):
    dashboards = {p.name for p in (ROOT / "grafana/dashboards").glob("*.json")}
    assert dashboards  # the glob found the folder
    for overlay in OVERLAYS:
        data = named(rendered[overlay], "ConfigMap", overlay)["grafana-dashboards"]["data"]
        assert set(data) == dashboards


def mounted_files(objs: list[dict], overlay: str, deployment_name: str) -> dict[str, str]:
    """Container path -> content, for every ConfigMap file the deployment mounts."""
    maps = {o["metadata"]["name"]: o["data"] for o in by_kind(objs, "ConfigMap")}
    spec = deployment(objs, overlay, deployment_name)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            data = maps[source["name"]]  # KeyError: a mount of a ConfigMap that is not there
            if "subPath" in mount:
                out[mount["mountPath"]] = data[mount["subPath"]]
            else:
                for key, text in data.items():
                    out[f"{mount['mountPath']}/{key}"] = text
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_loads_every_rule_file_the_repository_config_loads(rendered, overlay, tmp_path):
    files = mounted_files(rendered[overlay], overlay, "prometheus")
    config_path = "/etc/prometheus/prometheus.yml"
    for path, text in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    k8s_config = tmp_path / config_path.lstrip("/")
    loaded = {
        p.relative_to(k8s_config.parent).as_posix(): p.read_text()
        for p in loaded_rule_files(k8s_config)
    }
    repo = {
        p.relative_to(ROOT / "deploy/prometheus").as_posix(): p.read_text()
        for p in loaded_rule_files()
    }
    assert repo, "the repository's prometheus.yml loads no rule file?"
    assert loaded == repo
    ours = yaml.safe_load(k8s_config.read_text())
    theirs = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert ours["global"] == theirs["global"]
    assert ours["rule_files"] == theirs["rule_files"]
    assert "remote_write" not in ours  # documented, off by default


def test_prometheus_config_and_rules_pass_promtool(rendered, tmp_path):
    """promtool on the mounted files. Debian's Prometheus is built without Kubernetes service
    discovery, so the kubernetes_sd block is swapped for a static target for this check (the
    relabelling and the rules are still checked); the block itself is checked below."""
    files = mounted_files(rendered["single"], "single", "prometheus")
    for path, text in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    config_file = tmp_path / "etc/prometheus/prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    for job in config["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs")
        assert sd == [{"role": "pod", "namespaces": {"own_namespace": True}}]
        job["static_configs"] = [{"targets": ["gateway:8000"]}]
    config_file.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [require("promtool"), "check", "config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr


def uncomment_remote_write(text: str) -> str:
    """The documented remote_write block, switched on: every line from `# remote_write:`."""
    lines = text.splitlines()
    start = lines.index("# remote_write:")
    return "\n".join(lines[:start] + [line[2:] for line in lines[start:]]) + "\n"


@pytest.mark.parametrize(
    "config", ["deploy/prometheus/prometheus.yml", "deploy/k8s/base/prometheus.yml"]
)
def test_the_optional_remote_write_block_is_off_and_valid_when_switched_on(config, tmp_path):
    text = (ROOT / config).read_text()
    assert "remote_write" not in (yaml.safe_load(text) or {})  # off by default
    on = yaml.safe_load(uncomment_remote_write(text))
    (target,) = on["remote_write"]
    assert target["url"].endswith("/api/v1/push")
    on.pop("rule_files")  # checked above; here only the remote_write block matters
    for job in on["scrape_configs"]:
        for key in ("kubernetes_sd_configs", "file_sd_configs"):
            job.pop(key, None)  # see the promtool test above
        job["static_configs"] = [{"targets": ["gateway:8000"]}]
    on["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]}
    with_block = tmp_path / "prometheus.yml"
    with_block.write_text(yaml.safe_dump(on))
    result = subprocess.run(
        [require("promtool"), "check", "config", str(with_block)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_passes_amtool_and_reaches_the_receiver_in_its_pod(rendered, tmp_path):
    files = mounted_files(rendered["single"], "single", "alertmanager")
    config = tmp_path / "alertmanager.yml"
    config.write_text(files["/etc/alertmanager/alertmanager.yml"])
    result = subprocess.run(
        [require("amtool"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    spec = deployment(rendered["single"], "single", "alertmanager")["spec"]["template"]["spec"]
    receiver = next(c for c in spec["containers"] if c["name"] == "receiver")
    port = int(receiver["command"][receiver["command"].index("--port") + 1])
    urls = [
        h["url"]
        for r in yaml.safe_load(config.read_text())["receivers"]
        for h in r["webhook_configs"]
    ]
    # the shared file's loopback URL works because the receiver shares Alertmanager's pod
    assert urls and all(u.startswith(f"http://127.0.0.1:{port}/hook/") for u in urls)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_discovers_the_jobs_compose_scrapes(rendered, overlay):
    """Annotated pods, scraped on the annotated port, job = app.kubernetes.io/name."""
    compose_jobs = {
        group["labels"]["job"]
        for path in (ROOT / "deploy/prometheus/targets-compose").glob("*.json")
        for group in json.loads(path.read_text())
    }
    jobs = set()
    for dep in by_kind(rendered[overlay], "Deployment"):
        template = dep["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        ports = {
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        }
        assert int(annotations["prometheus.io/port"]) in ports, dep["metadata"]["name"]
        assert annotations["prometheus.io/path"] == "/metrics"
        jobs.add(template["metadata"]["labels"]["app.kubernetes.io/name"])
    assert jobs == compose_jobs
    config = yaml.safe_load((K8S / "base/prometheus.yml").read_text())
    relabel = config["scrape_configs"][0]["relabel_configs"]
    targets = {r.get("target_label") for r in relabel}
    assert {"job", "service", "instance", "__metrics_path__"} <= targets
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_grafana_data_sources_name_services_of_the_lab(rendered):
    datasources = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/datasources.yaml").read_text()
    )
    for overlay in OVERLAYS:
        services = {
            s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
            for s in by_kind(rendered[overlay], "Service")
        }
        for source in datasources["datasources"]:
            match = re.fullmatch(r"http://([a-z-]+):(\d+)", source["url"])
            assert match, source["url"]
            assert int(match[2]) in services.get(match[1], set()), (overlay, source["url"])


# -------------------------------------------------------------------- trainee overlay


def test_trainee_overlay_puts_everything_in_its_namespace_with_the_suffix(rendered):
    objs = rendered["trainee"]
    single = {(o["kind"], o["metadata"]["name"]) for o in rendered["single"]}
    single_base = {(o["kind"], base_name(o, "single")) for o in rendered["single"]}
    for obj in objs:
        meta = obj["metadata"]
        assert meta["labels"]["triagelab.dev/trainee"] == "example", meta["name"]
        if obj["kind"] == "Namespace":
            continue
        assert meta["namespace"] == "triagelab-example", meta["name"]
        if obj["kind"] == "Service":
            # the DNS names every shared config uses, unique per namespace
            assert (obj["kind"], meta["name"]) in single
        else:
            assert re.search(r"-example(-[a-z0-9]{10})?$", meta["name"]), meta["name"]
    trainee_base = {(o["kind"], base_name(o, "trainee")) for o in objs}
    assert trainee_base - {("ResourceQuota", "lab-quota")} - single_base == {
        ("Namespace", "triagelab-example")
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_names_a_rendered_object(rendered, overlay):
    objs = rendered[overlay]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for dep in by_kind(objs, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
        for container in spec["containers"]:
            for value in env_of(container).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    assert ("Secret", value["secretKeyRef"]["name"]) in names
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    for binding in by_kind(objs, "RoleBinding"):
        assert ("Role", binding["roleRef"]["name"]) in names
        for subject in binding["subjects"]:
            assert ("ServiceAccount", subject["name"]) in names
    for service in by_kind(objs, "Service"):
        selector = service["spec"]["selector"]
        matched = [
            d
            for d in by_kind(objs, "Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, service["metadata"]["name"]


def totals(objs: list[dict], field: str) -> tuple[float, int]:
    cpu_sum, mem_sum = 0.0, 0
    for dep in by_kind(objs, "Deployment"):
        for container in dep["spec"]["template"]["spec"]["containers"]:
            res = container["resources"][field]
            cpu_sum += cpu(res["cpu"]) * dep["spec"]["replicas"]
            mem_sum += mem(res["memory"]) * dep["spec"]["replicas"]
    return cpu_sum, mem_sum


def test_trainee_limits_are_smaller_and_fit_the_namespace_quota(rendered):
    single = {base_name(d, "single"): d for d in by_kind(rendered["single"], "Deployment")}
    trainee = {base_name(d, "trainee"): d for d in by_kind(rendered["trainee"], "Deployment")}
    for name, dep in trainee.items():
        theirs = {c["name"]: c for c in single[name]["spec"]["template"]["spec"]["containers"]}
        for container in dep["spec"]["template"]["spec"]["containers"]:
            small, big = (
                container["resources"]["limits"],
                theirs[container["name"]]["resources"]["limits"],
            )
            assert cpu(small["cpu"]) <= cpu(big["cpu"]), name
            assert mem(small["memory"]) <= mem(big["memory"]), name
    for field in ("requests", "limits"):
        t_cpu, t_mem = totals(rendered["trainee"], field)
        s_cpu, s_mem = totals(rendered["single"], field)
        assert t_cpu < s_cpu and t_mem < s_mem, field
    (quota,) = by_kind(rendered["trainee"], "ResourceQuota")
    hard = quota["spec"]["hard"]
    for field in ("requests", "limits"):
        t_cpu, t_mem = totals(rendered["trainee"], field)
        assert t_cpu <= cpu(hard[f"{field}.cpu"]) and t_mem <= mem(hard[f"{field}.memory"])
    pods = sum(d["spec"]["replicas"] for d in trainee.values())
    assert pods < int(hard["pods"])


def test_new_trainee_makes_a_lab_of_its_own_per_name(rendered):
    name = f"t{uuid.uuid4().hex[:8]}"
    out = K8S / "trainees" / name
    try:
        result = subprocess.run(
            [str(K8S / "new-trainee.sh"), name], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        objs = kustomize(out)
        example = rendered["trainee"]
        assert len(objs) == len(example)
        assert {o["metadata"].get("namespace") for o in objs} == {None, f"triagelab-{name}"}
        assert by_kind(objs, "Namespace")[0]["metadata"]["name"] == f"triagelab-{name}"
        for obj in by_kind(objs, "Deployment"):
            assert obj["metadata"]["name"].endswith(f"-{name}")
        # its own credentials
        mine = by_kind(objs, "Secret")[0]["data"]
        theirs = by_kind(example, "Secret")[0]["data"]
        assert all(mine[k] != theirs[k] for k in SECRET_KEYS)
        # a lab file for drills against it: that trainee's credentials, each URL on the port of
        # the Service it forwards (deploy/labs/kubernetes.toml, docs/kubernetes.md)
        lab = UrlLab.load(out / "lab.toml")
        assert lab.admin_token() == base64.b64decode(mine["ADMIN_TOKEN"]).decode()
        assert lab.internal_token() == base64.b64decode(mine["INTERNAL_TOKEN"]).decode()
        ports = {
            svc["metadata"]["name"]: {p["port"] for p in svc["spec"]["ports"]}
            for svc in by_kind(objs, "Service")
        }
        for component, url in lab.urls.items():
            assert int(url.rsplit(":", 1)[1]) in ports[component], (component, url)
        # names that are not DNS labels are refused
        bad = subprocess.run(
            [str(K8S / "new-trainee.sh"), "Not_A_Name"], capture_output=True, text=True, timeout=30
        )
        assert bad.returncode != 0 and not (K8S / "trainees" / "Not_A_Name").exists()
    finally:
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.suppress(OSError):
            (K8S / "trainees").rmdir()  # only when empty


def test_new_secrets_writes_strong_fresh_values_and_keeps_them(tmp_path):
    script = str(K8S / "new-secrets.sh")
    subprocess.run([script, str(tmp_path)], check=True, capture_output=True, timeout=30)
    env = tmp_path / "lab-secrets.env"

    def values() -> dict[str, str]:
        lines = [ln for ln in env.read_text().splitlines() if ln and not ln.startswith("#")]
        return dict(ln.split("=", 1) for ln in lines)

    first = values()
    assert set(first) == SECRET_KEYS
    assert len(set(first.values())) == len(first)
    for key, value in first.items():
        assert len(value.encode()) >= 32 and value not in SHIPPED_SECRETS, key
    assert env.stat().st_mode & 0o077 == 0  # readable by its owner only
    subprocess.run([script, str(tmp_path)], check=True, capture_output=True, timeout=30)
    assert values() == first  # re-running never rotates a running lab's secrets
    subprocess.run([script, "--force", str(tmp_path)], check=True, capture_output=True, timeout=30)
    assert set(values().values()).isdisjoint(first.values())
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(K8S / "overlays/single/lab-secrets.env")],
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert ignored.returncode == 0, "lab-secrets.env must be git-ignored"


# ------------------------------------------------------------------------ distributed Locust


def locust_commands(rendered: dict) -> tuple[list[str], list[str]]:
    specs = {base_name(d, "single"): d for d in by_kind(rendered["single"], "Deployment")}
    master = specs["locust"]["spec"]["template"]["spec"]["containers"][0]["command"]
    worker = specs["locust-worker"]["spec"]["template"]["spec"]["containers"][0]["command"]
    return master, worker


def test_compose_has_a_scalable_locust_worker_and_still_validates(rendered):
    compose = ROOT / "docker-compose.yml"
    exe = require("docker-compose")
    check = subprocess.run(
        [exe, "-f", str(compose), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    services = yaml.safe_load(compose.read_text())["services"]
    master, worker = services["locust"], services["locust-worker"]
    assert "--master" in master["command"] and "--worker" in worker["command"]
    assert worker["command"][worker["command"].index("--master-host") + 1] == "locust"
    port = worker["command"][worker["command"].index("--master-port") + 1]
    assert master["command"][master["command"].index("--master-bind-port") + 1] == port
    # scalable: no fixed container name, no published port
    assert "container_name" not in worker and "ports" not in worker
    k8s_master, k8s_worker = locust_commands(rendered)
    # the same master and worker in both (compose takes its users from ${LOCUST_USERS:-5})
    assert k8s_worker == worker["command"]
    users = master["command"].index("--users")
    compose_master = master["command"][:users] + master["command"][users + 2 :]
    users = k8s_master.index("--users")
    assert k8s_master[:users] + k8s_master[users + 2 :] == compose_master


class TinyShop(BaseHTTPRequestHandler):
    """Just enough of the gateway's API for the locustfile; counts what it answers."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    served = 0

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with TinyShop.lock:
            TinyShop.served += 1

    def _body(self) -> dict:
        size = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(size) or b"{}")

    def do_GET(self) -> None:
        if self.path == "/api/products":
            self._send(200, [{"id": 1}, {"id": 2}, {"id": 3}])
        elif self.path.startswith("/api/orders/"):
            self._send(200, {"order_id": self.path.rsplit("/", 1)[1], "status": "paid"})
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/api/login":
            self._send(200, {"access_token": "t", "expires_in": 3600})
        elif self.path == "/api/checkout":
            if body.get("card_number", "").startswith("4000"):
                self._send(402, {"error": "card_declined"})
            else:
                self._send(201, {"order_id": uuid.uuid4().hex})
        else:
            self._send(404, {"error": "not_found"})

    def log_message(self, *args: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we created, then SIGKILL; never anything we did not start."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=5)


def requests_total(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("locust_requests_total{")
    )


@pytest.fixture
def tiny_shop() -> Iterator[str]:
    TinyShop.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), TinyShop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_master_serves_the_sum_of_two_real_workers(rendered, tiny_shop, tmp_path):
    """The Kubernetes master and worker commands, as processes: a master, two workers."""
    import psutil

    master_cmd, worker_cmd = locust_commands(rendered)
    web, bind = free_port(), free_port()

    def arg(cmd: list[str], flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    def replace(cmd: list[str], values: dict[str, str]) -> list[str]:
        out = list(cmd)
        for flag, value in values.items():
            out[out.index(flag) + 1] = value
        return out

    assert arg(worker_cmd, "--master-port") == arg(master_cmd, "--master-bind-port")
    # The deployed commands, pointed at 127.0.0.1; the master waits for both workers and
    # stops the run after 8 s, then stays up (--autoquit) so its totals can be read.
    deployed = replace(
        master_cmd,
        {
            "--host": tiny_shop,
            "--web-host": "127.0.0.1",
            "--web-port": str(web),
            "--master-bind-port": str(bind),
            "--expect-workers": "2",
            "--users": "4",
            "--spawn-rate": "4",
        },
    )
    master = [*deployed, "--master-bind-host", "127.0.0.1", "--run-time", "8s", "--autoquit", "15"]
    worker = replace(worker_cmd, {"--master-host": "127.0.0.1", "--master-port": str(bind)})
    assert master[0] == worker[0] == "locust"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env.update(
        LOCUST_METRICS_PORT="off",  # as deployed: /metrics on the web UI port
        LOCUST_WAIT_MIN="0.05",
        LOCUST_WAIT_MAX="0.1",
        LOCUST_DECLINE_RATE="0.3",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for label, cmd in (("master", master), ("worker1", worker), ("worker2", worker)):
            log = open(tmp_path / f"{label}.log", "wb")  # closed in finally
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "locust", *cmd[1:]],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        url = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 45
        workers: list[dict] = []
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            # both workers ran users (the master runs none)
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    stats = client.get(f"{url}/stats/requests").json()
                    workers = stats.get("workers", [])
                    if len(workers) == 2 and all(w["user_count"] > 0 for w in workers):
                        break
                time.sleep(0.5)  # pacing between polls
            assert len(workers) == 2 and all(w["user_count"] > 0 for w in workers), workers
            assert sum(w["user_count"] for w in workers) == 4
            rss = [psutil.Process(p.pid).memory_info().rss for p in procs]
            # the run stops after 8 s; wait for the workers to stop and send their last report
            total = -1.0
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    stats = client.get(f"{url}/stats/requests").json()
                    page = client.get(f"{url}/metrics").text
                    # Stopped, and the workers' last reports (every 3 s) are in: the count no
                    # longer trails what the shop answered. Polled, bounded by the deadline.
                    total = requests_total(page)
                    if stats.get("state") == "stopped" and total >= TinyShop.served - 4:
                        break
                time.sleep(0.5)  # pacing between polls
        served = TinyShop.served
        assert total > 0, "the master's /metrics counted nothing"
        # Every answered request is counted once, summed over both workers on the master;
        # a request in flight when the users stopped may be answered but not counted.
        assert served - 4 <= total <= served, (total, served)
        declined = 'locust_requests_total{method="POST",name="/api/checkout",outcome="declined"}'
        assert declined in page
        print(f"\nLocust resident memory, master and workers: {[r // 2**20 for r in rss]} MiB")
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
    master_log = (tmp_path / "master.log").read_text(errors="replace")
    assert "Traceback" not in master_log, master_log[-3000:]
