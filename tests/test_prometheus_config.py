"""The committed Prometheus and Alertmanager configuration, checked by their own tools.

prometheus.yml uses relative paths, so it is checked in both layouts that load it: the native
runtime folder (symlinks + generated targets) and the compose mounts (targets-compose/).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from labctl.config import DEFAULT_PORTS, REPO_ROOT, SERVICES, Ports, loaded_rule_files
from labctl.native.lab import NativeLab

PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
AM_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
JOBS = (*SERVICES, "prometheus", "alertmanager", "locust")
RULE_FILES = loaded_rule_files()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def native_layout(tmp_path: Path) -> Path:
    """The runtime folder `make up` prepares, with the default native ports."""
    lab = NativeLab(tmp_path, Ports(), out=print)
    lab._prepare()
    lab._write_targets(DEFAULT_PORTS)
    lab.close()
    return tmp_path / "prometheus"


@pytest.fixture
def compose_layout(tmp_path: Path) -> Path:
    """The mounts docker-compose.yml gives Prometheus, as symlinks."""
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    (etc / "prometheus.yml").symlink_to(PROM_DIR / "prometheus.yml")
    (etc / "rules").symlink_to(PROM_DIR / "rules")
    (etc / "slo-profiles").symlink_to(PROM_DIR / "slo-profiles")
    (etc / "targets").symlink_to(PROM_DIR / "targets-compose")
    return etc


@pytest.mark.parametrize("layout", ["native_layout", "compose_layout"])
def test_promtool_check_config(layout: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(layout)
    result = run(tool("promtool"), "check", "config", str(folder / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Relative rule_files resolved in this layout: every committed rule file was found.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    assert len(RULE_FILES) >= 2, "prometheus.yml loads no rule files"
    result = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config() -> None:
    result = run(tool("amtool"), "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_copy_rendered_for_another_receiver_port(tmp_path: Path) -> None:
    lab = NativeLab(tmp_path, Ports(), out=print)
    rendered = lab.alertmanager_config(19095)
    lab.close()
    assert rendered != AM_CONFIG and ":9095/" not in rendered.read_text()
    result = run(tool("amtool"), "check-config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_a_job_with_its_service_label(native_layout: Path) -> None:
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(JOBS)
    for layout, host in ((native_layout / "targets", None), (PROM_DIR / "targets-compose", "")):
        for name in JOBS:
            files = jobs[name]["file_sd_configs"][0]["files"]
            assert files == [f"targets/{name}.json"]
            (group,) = json.loads((layout / f"{name}.json").read_text())
            assert group["labels"] == {"job": name, "service": name}
            (target,) = group["targets"]
            target_host, port = target.rsplit(":", 1)
            if host is None:  # native: loopback, the configured port
                assert (target_host, int(port)) == ("127.0.0.1", DEFAULT_PORTS[name])
            elif name != "prometheus":  # compose: the service's DNS name
                assert target_host == name


def test_lab_timings() -> None:
    """Lab alerts must fire within a drill; rate windows rely on the 5s scrape interval."""
    glob = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["global"]
    assert glob["scrape_interval"] == glob["evaluation_interval"] == "5s"
