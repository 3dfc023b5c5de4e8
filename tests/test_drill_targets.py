"""Drills against any lab: a lab given only by its URLs (labctl.drills.target.UrlLab).

The integration test runs the crash drill against a native lab addressed only by a lab file,
the way a compose project or a Kubernetes namespace is addressed: the runner gets URLs and a
secrets file, never the runtime folder. A thread of the test plays the platform's restart
policy (compose's `restart: unless-stopped`, a pod's `restartPolicy: Always`): it restarts the
crashed service as soon as it is gone, again and again, and the crash fault's hold makes each of
those starts exit until the fault is over: a crash loop, as on a platform.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from labctl.config import SERVICES, LabError, Ports
from labctl.drills import verify as drill_verify
from labctl.drills.data_check import checked_out
from labctl.drills.model import load_drills
from labctl.drills.restart import restart_services
from labctl.drills.target import LabFile, NativeTarget, UrlLab
from labctl.native.lab import NativeLab
from services.kit.faults import crash_hold_path
from tests.support import ROOT, wait_until

DRILLS = load_drills()
URLS = {
    "gateway": "http://127.0.0.1:8000",
    "auth": "http://127.0.0.1:8001",
    "order": "http://127.0.0.1:8002",
    "payment": "http://127.0.0.1:8003",
    "notification": "http://127.0.0.1:8004",
    "prometheus": "http://127.0.0.1:9090",
}


def _lab_file(folder: Path, urls: dict[str, str], secrets: dict[str, str], **extra) -> Path:
    (folder / "secrets.env").write_text(
        "# a comment\n" + "".join(f"{k}={v}\n" for k, v in secrets.items()), encoding="utf-8"
    )
    lines = ['secrets = "secrets.env"', *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    lines += ["[urls]", *(f'{name} = "{url}"' for name, url in urls.items())]
    path = folder / "lab.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_SECRETS = {"ADMIN_TOKEN": "a" * 40, "INTERNAL_TOKEN": "i" * 40}


def test_a_lab_file_gives_urls_and_secrets(tmp_path: Path) -> None:
    lab = UrlLab.load(
        _lab_file(tmp_path, {**URLS, "receiver": "http://10.0.0.5:9095/"}, GOOD_SECRETS)
    )
    assert lab.urls["receiver"] == "http://10.0.0.5:9095"  # no trailing slash
    assert lab.admin_token() == "a" * 40 and lab.internal_token() == "i" * 40
    assert lab.lab_dir is None and lab.describe()["file"] == str(tmp_path / "lab.toml")
    with pytest.raises(LabError, match="cannot be rebuilt"):
        lab.rebuild()


@pytest.mark.parametrize(
    ("urls", "secrets", "extra", "message"),
    [
        (
            {k: v for k, v in URLS.items() if k != "payment"},
            GOOD_SECRETS,
            {},
            "missing urls: payment",
        ),
        ({**URLS, "grafana": "http://127.0.0.1:3000"}, GOOD_SECRETS, {}, "unknown urls: grafana"),
        ({**URLS, "order": "not a url"}, GOOD_SECRETS, {}, "urls.order"),
        (URLS, {"ADMIN_TOKEN": "x" * 40}, {}, "has no INTERNAL_TOKEN"),
        (URLS, GOOD_SECRETS, {"restart_timeout": 5}, "restart_timeout"),
        (URLS, GOOD_SECRETS, {"gateway_url": "x"}, "gateway_url"),
    ],
)
def test_a_bad_lab_file_is_refused_with_what_is_wrong(
    tmp_path: Path, urls: dict, secrets: dict, extra: dict, message: str
) -> None:
    with pytest.raises(LabError, match=message):
        UrlLab.load(_lab_file(tmp_path, urls, secrets, **extra))


def test_a_missing_lab_or_secrets_file_or_bad_toml_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="cannot read the lab file"):
        UrlLab.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("urls = [", encoding="utf-8")
    with pytest.raises(LabError, match="is not TOML"):
        UrlLab.load(tmp_path / "bad.toml")
    path = _lab_file(tmp_path, URLS, GOOD_SECRETS)
    (tmp_path / "secrets.env").unlink()
    with pytest.raises(LabError, match="cannot read secrets"):
        UrlLab.load(path)


def test_the_compose_lab_file_matches_the_ports_compose_publishes() -> None:
    """deploy/labs/compose.toml loads (its secrets are compose's .env) and each URL is a port
    docker-compose.yml publishes on 127.0.0.1 for that component."""
    lab = UrlLab.load(ROOT / "deploy/labs/compose.toml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, url in lab.urls.items():
        published = {p.split(":")[1] for p in compose[name].get("ports", [])}
        assert url.rsplit(":", 1)[1] in published, (name, url, published)
    dotenv = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                  if line and not line.startswith("#"))  # fmt: skip
    assert lab.admin_token() == dotenv["ADMIN_TOKEN"]


def test_the_kubernetes_lab_file_names_the_port_forwards_of_the_docs() -> None:
    """deploy/labs/kubernetes.toml's ports are those docs/kubernetes.md forwards."""
    raw = LabFile.model_validate(tomllib.loads((ROOT / "deploy/labs/kubernetes.toml").read_text()))
    docs = (ROOT / "docs/kubernetes.md").read_text()
    for name, url in raw.urls.items():
        assert f"{name}:{url.port}" in docs, f"docs/kubernetes.md forwards no {name}:{url.port}"


def test_shoppers_record_of_accepted_checkouts_is_read_from_the_window_on(tmp_path: Path) -> None:
    path = tmp_path / "checkouts.jsonl"
    assert checked_out(path, 0) is None  # no record: the data check says so, it does not pass
    path.write_text(
        '{"ts": 100.0, "order_id": "ord_old"}\n{"ts": 200.5, "order_id": "ord_a"}\n'
        '{"ts": 201, "order_id": "ord_b"}\n{"ts": 202, "order_',  # cut short by a stopped Locust
        encoding="utf-8",
    )
    assert checked_out(path, 200.0) == {"ord_a", "ord_b"}


@pytest.mark.parametrize(("until_in", "code"), [(60, 70), (-1, 0)])
def test_a_service_exits_at_startup_while_a_crash_hold_lasts(
    tmp_path: Path, until_in: float, code: int
) -> None:
    """The hold a crash fault leaves: a start within it exits with the crash's code; a start
    after it removes it and goes on."""
    audit = tmp_path / "faults-audit.jsonl"
    hold = crash_hold_path(audit, "order")
    hold.write_text(json.dumps({"exit_code": 70, "until": time.time() + until_in}))
    program = (
        "import sys; from pathlib import Path; from services.kit.faults import FaultManager\n"
        "m = FaultManager('order', audit_path=Path(sys.argv[1]), pool_capacity=1,"
        " set_version=lambda v: None)\n"
        "m.exit_if_held()\n"
    )
    done = subprocess.run([sys.executable, "-c", program, str(audit)], cwd=ROOT, timeout=60)
    assert done.returncode == code
    assert hold.exists() == (code != 0)


class Platform:
    """The test's stand-in for a restart policy: restarts whatever service is gone, in a loop."""

    def __init__(self, lab: NativeLab) -> None:
        self.lab = lab
        self.ports = {n: int(u.rsplit(":", 1)[1]) for n, u in lab.urls.items()}
        self.failed: list[float] = []  # starts that exited (the crash loop)
        self.restarted: list[tuple[float, list[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        for _ in range(2000):  # bounded; ~2 s a round
            if self.stop.wait(1.0):
                return
            if all(s in self.lab.urls for s in SERVICES):
                continue
            try:
                restarted = restart_services(self.lab, self.ports, lambda _line: None)
            except LabError:
                self.failed.append(time.time())
                continue
            if restarted:
                self.restarted.append((time.time(), restarted))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_crash_drill_against_a_lab_given_only_by_urls(tmp_path: Path) -> None:
    lab = NativeLab(tmp_path / "lab", Ports.any_free(), load=False)
    platform = Platform(lab)
    try:
        lab.up()
        platform.ports = {n: int(u.rsplit(":", 1)[1]) for n, u in lab.urls.items()}
        secrets = lab.secrets()
        urls = {n: u for n, u in lab.urls.items() if n in (*SERVICES, "prometheus", "receiver")}
        (tmp_path / "elsewhere").mkdir()
        target = UrlLab.load(_lab_file(tmp_path / "elsewhere", urls, secrets, restart_timeout=120))
        platform.thread.start()
        ok, rows = drill_verify.verify(target, [DRILLS["crash"]], rebuild=False)
        print(f"\n{drill_verify.table(rows)}\nplatform: {len(platform.failed)} failed starts,"
              f" restarts {platform.restarted}")  # fmt: skip
        assert ok, drill_verify.table(rows)
        journal = json.loads((Path(rows[0].run_dir) / "journal.json").read_text())
        # Addressed by URLs only: nothing of the runtime folder reached the runner.
        assert "runtime_dir" not in journal["lab"] and journal["lab"]["urls"] == urls
        assert journal["data_check"]["ok"] is True
        # The shoppers' own record of accepted checkouts fed the data check.
        accepted = checked_out(Path(rows[0].run_dir) / "checkouts.jsonl", 0)
        assert accepted and journal["data_check"]["accepted_orders"] == len(accepted)
        # Only the PromQL steps ran (the others read the native lab's files), and found it.
        assert [s["pillar"] for s in journal["native"]] == ["metrics"]
        assert all(s["ok"] for s in journal["native"]) and "1/1" in rows[0].steps
        # The crash was a crash loop: the platform's starts exited while the fault lasted, then
        # one brought order back; the runner waited for it and restarted nothing itself.
        crash = next(e for e in journal["events"] if e["event"] == "fault_set")
        assert platform.failed and min(platform.failed) < crash["t"] + 90
        assert [names for _, names in platform.restarted] == [["order"]]
        assert platform.restarted[0][0] >= crash["t"] + 90 - 1  # not before the hold ended
        # Verify ends the load once ServiceDown fired, so the wait is the rollback's (a run of
        # the whole drill waits at the fault's end, `service_restarted`).
        back = [
            e.get("services", e.get("restarted"))
            for e in journal["events"]
            if e["event"] in ("service_restarted", "rollback")
        ]
        assert ["order"] in back, journal["events"]
        assert not crash_hold_path(lab.fault_audit_file, "order").exists()
    finally:
        platform.stop.set()
        platform.thread.join(60)
        lab.down()
        lab.close()


@pytest.mark.integration
def test_natively_a_crash_leaves_its_hold_and_rollback_lifts_it_and_restarts(
    native_lab: NativeLab,
) -> None:
    """The crash fault writes its hold before the process exits; `labctl drill rollback`'s
    restart (the native runner's) removes it and starts the service on the port it had."""
    port = native_lab.port("notification")
    hold = crash_hold_path(native_lab.fault_audit_file, "notification")
    assert native_lab.runtime_dir not in hold.parents  # nothing of it where a trainee reads
    admin = {"Authorization": f"Bearer {native_lab.admin_token()}"}
    fault = {"fault": {"kind": "crash", "ttl_seconds": 600}}
    resp = httpx.post(f"{native_lab.urls['notification']}/admin/faults", json=fault,
                      headers=admin, timeout=5, trust_env=False)  # fmt: skip
    assert resp.status_code == 201, resp.text
    wait_until(lambda: "notification" not in native_lab.urls, timeout=30, what="the crash")
    assert json.loads(hold.read_text())["until"] > time.time() + 500  # lasts the fault's TTL
    said: list[str] = []
    assert NativeTarget(native_lab).restart(said.append) == ["notification"]
    assert not hold.exists()
    assert native_lab.port("notification") == port and native_lab.missing() == []
