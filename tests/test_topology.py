"""services/topology.toml is the one list of services, ports and peers: everything that cannot
import it (Prometheus config, alert rules, dashboards, compose target files) is checked against
it here, and the loader refuses a topology that cannot start."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from services import topology

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
# A label regex that lists services: `service=~"gateway|auth|..."` (JSON-escaped or not).
SERVICE_LIST = re.compile(r'(?:service|job)=~\\?"((?:[a-z]+\|)+[a-z]+)\\?"')


def test_the_loader_reads_five_services_in_start_order() -> None:
    assert topology.SERVICES == ("auth", "payment", "notification", "order", "gateway")
    assert topology.ENTRY == "gateway"
    assert topology.peers("order") == ("payment", "notification")
    assert topology.start_waves() == [("auth", "payment", "notification"), ("order",), ("gateway",)]
    assert len(set(topology.DEFAULT_PORTS.values())) == len(topology.DEFAULT_PORTS)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('calls = ["payment", "notification"]', 'calls = ["payment", "billing"]'), "unknown"),
        (("port = 8001\ncalls = []", 'port = 8001\ncalls = ["order"]'), "listed before"),
    ],
)  # fmt: skip
def test_a_topology_that_cannot_start_is_refused(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = topology.FILE.read_text()
    assert edit[0] in text
    broken = tmp_path / "topology.toml"
    broken.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(ValueError, match=message):
        topology._load(broken)


def _service_lists(text: str) -> list[set[str]]:
    return [set(m.split("|")) for m in SERVICE_LIST.findall(text)]


def test_every_service_regex_in_rules_and_dashboards_names_exactly_the_topology() -> None:
    """`up{job=~"gateway|auth|..."}` and the dashboards' service filters: a sixth service in
    topology.toml must show up in them (or they silently leave it out)."""
    services = set(topology.SERVICES)
    files = [*PROM.glob("rules/*.yml"), *(ROOT / "grafana").rglob("*.json")]
    found = 0
    for path in files:
        for names in _service_lists(path.read_text()):
            if names & services:  # a list of the lab's own services (not Prometheus, Loki…)
                found += 1
                extra = names - services - {"receiver"}
                assert names >= services and not extra, f"{path.name}: {sorted(names)}"
    assert found >= 15, "the service lists were not found: did their spelling change?"
    assert _service_lists('x{service=~"gateway|auth"}') == [{"gateway", "auth"}]  # the regex


def test_prometheus_scrapes_each_component_and_compose_targets_match() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    assert set(topology.SERVICES) <= set(jobs)
    for name in topology.SERVICES:
        groups = json.loads((PROM / "targets-compose" / f"{name}.json").read_text())
        assert groups[0]["targets"] == [f"{name}:{topology.DEFAULT_PORTS[name]}"], name
        assert groups[0]["labels"] == {"job": name, "service": name}
