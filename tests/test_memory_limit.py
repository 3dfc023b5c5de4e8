"""process_memory_limit_bytes: the limit a service runs under, read once, never made up.

services/topology.toml's memory_limit_mb is the one copy of each service's limit; compose and
Kubernetes are checked against it in their own tests, the native lab's environment here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from labctl.config import Ports
from labctl.native.components import SPECS
from labctl.native.lab import NativeLab
from services import topology
from services.kit import Settings
from services.kit import metrics as kit_metrics
from services.kit.metrics import Metrics, memory_limit

MiB = 2**20


def _files(tmp_path: Path, v2: str | None, v1: str | None) -> tuple[Path, Path]:
    paths = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    for path, text in zip(paths, (v2, v1), strict=True):
        if text is not None:
            path.write_text(text + "\n")
    return paths


@pytest.mark.parametrize(
    ("v2", "v1", "setting", "expected"),
    [
        ("536870912", None, None, (512 * MiB, "cgroup")),  # cgroup v2 (compose, a pod)
        ("536870912", None, 1024, (512 * MiB, "cgroup")),  # the kernel's is the smaller
        ("8589934592", None, 384, (384 * MiB, "setting")),  # a native lab in an 8 GiB container
        ("max", str(2**63 - 4096), 384, (384 * MiB, "setting")),  # no limit in v2 nor v1
        (None, "268435456", None, (256 * MiB, "cgroup")),  # cgroup v1 with a limit
        (None, "9223372036854771712", 1024, (1024 * MiB, "setting")),  # v1 unlimited (this host)
        (None, None, 1024, (1024 * MiB, "setting")),
        ("max", None, None, None),  # nothing known: no value at all
        (None, "garbage", None, None),
    ],
)  # fmt: skip
def test_the_limit_is_the_smaller_of_the_cgroups_and_the_setting(
    tmp_path: Path, v2: str | None, v1: str | None, setting: int | None, expected: object
) -> None:
    v2_path, v1_path = _files(tmp_path, v2, v1)
    assert memory_limit(setting, v2_path, v1_path) == expected


def test_the_gauge_exists_only_with_a_limit(tmp_path: Path, monkeypatch) -> None:
    v2_path, v1_path = _files(tmp_path, None, None)
    monkeypatch.setattr(kit_metrics, "CGROUP_V2_MEMORY_MAX", v2_path)
    monkeypatch.setattr(kit_metrics, "CGROUP_V1_MEMORY_LIMIT", v1_path)
    registry = Metrics("notification", "1.0.0", "lab", 1024).registry
    assert registry.get_sample_value("process_memory_limit_bytes", {"source": "setting"}) == (
        1024 * MiB
    )
    assert "process_resident_memory_bytes" in generate_latest(registry).decode()  # same scrape
    none = generate_latest(Metrics("notification", "1.0.0", "lab").registry).decode()
    assert "process_memory_limit_bytes" not in none


def test_the_setting_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MEMORY_LIMIT_MB", "384")
    assert Settings().memory_limit_mb == 384
    monkeypatch.delenv("MEMORY_LIMIT_MB")
    assert Settings().memory_limit_mb is None


def test_every_service_has_a_limit_and_the_native_lab_passes_it(tmp_path: Path) -> None:
    lab = NativeLab(tmp_path, Ports(), out=print)
    try:
        for name, svc in topology.SERVICES_BY_NAME.items():
            assert svc.memory_limit_mb >= 256, name  # ~90 MB resident at the least
            _, env = SPECS[name].command(lab, svc.port, topology.DEFAULT_PORTS)
            assert env["MEMORY_LIMIT_MB"] == str(svc.memory_limit_mb), name
    finally:
        lab.close()
