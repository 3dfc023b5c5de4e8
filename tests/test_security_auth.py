"""Issue 15, part B, against real processes on 127.0.0.1: secrets, service-to-service
authentication, the shopper's identity, login limits, and the lab's secrets file.

docs/security.md describes what these tests hold the services to.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jwt
import psutil
import pytest
import yaml

from labctl.config import LabError, Ports
from labctl.native.lab import LAB_SECRETS, NativeLab
from labctl.native.procs import listening_ports
from loadtest.config import LoadSettings
from services.auth.main import ALGORITHM, DEMO_PASSWORDS, ISSUER
from services.fault_spec import DEFAULT_ADMIN_TOKEN
from services.kit.settings import DEV_INTERNAL_TOKEN, DEV_JWT_SECRET, SHIPPED_SECRETS, Settings
from tests.support import (
    ADMIN,
    INTERNAL,
    ROOT,
    SECRET_ENV,
    as_shopper,
    running_services,
    shopper_token,
    wait_until,
)

pytestmark = pytest.mark.integration

CARD_OK = "4242424242424242"
CART = {"items": [{"product_id": "sku-mug", "quantity": 1}], "card_number": CARD_OK}
SECRET_NAMES = ("JWT_SECRET", "ADMIN_TOKEN", "INTERNAL_TOKEN")


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    """The project's standard error body (services/kit/errors.py)."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) >= {"code", "message", "correlation_id"}, body
    assert body["code"] == code, body
    assert body["correlation_id"] == r.headers["x-correlation-id"]
    return body


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if m and m.group(1) == name:
                got = ",".join(sorted((m.group(2) or "").split(",")))
                if got == want:
                    return float(m.group(3))
    return 0.0


def forged(user: str = "alice", secret: str = DEV_JWT_SECRET) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": user, "iat": now, "exp": now + 600, "iss": ISSUER}, secret, algorithm=ALGORITHM
    )


def bare_env(**env: str) -> dict[str, str]:
    """The test runner's environment without any secret or lab switch, plus `env`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in (*SECRET_NAMES, "LAB_MODE") and not k.startswith("LOGIN_")
    }
    return {**base, **env}


def start(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", f"services.{name}.main:create_app", "--factory",
                "--host", "127.0.0.1", "--port", "0", "--no-access-log",
            ],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip


def refused(name: str, env: dict[str, str], tmp: Path) -> str:
    """Start `name` and return what it said when it refused to start (fails if it ran)."""
    log = tmp / f"{name}.log"
    proc = start(name, {**env, "DATA_DIR": str(tmp / "data")}, log)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"{name} kept running: {log.read_text()[-2000:]}")
    assert code != 0
    return log.read_text()


def serving(proc: subprocess.Popen, log: Path) -> str:
    """The base URL of a service process once it answers /healthz (polled with a deadline)."""

    def port() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-2000:]}")
        ports = listening_ports(psutil.Process(proc.pid))
        return min(ports) if ports else None

    url = f"http://127.0.0.1:{wait_until(port, timeout=60, what='listening')}"
    wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, timeout=60)
    return url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# --------------------------------------------------------------------------- secrets


def test_a_bare_start_refuses_the_shipped_secrets(tmp_path):
    """`uvicorn services.auth.main:create_app --factory` with no configuration: no service."""
    out = refused("auth", bare_env(), tmp_path)
    for name in SECRET_NAMES:
        assert f"{name} is the development value that ships in the repository" in out, out
    assert "LAB_MODE=local" in out and "refusing to start" in out
    assert "Traceback" not in out  # one clear message


def test_a_shipped_secret_among_good_ones_is_still_refused(tmp_path):
    env = bare_env(**{**SECRET_ENV, "JWT_SECRET": DEV_JWT_SECRET})
    out = refused("order", env, tmp_path)
    assert "JWT_SECRET is the development value" in out
    assert "ADMIN_TOKEN" not in out  # the others are fine


def test_only_an_explicit_local_lab_accepts_the_shipped_secrets(tmp_path):
    log = tmp_path / "auth.log"
    proc = start("auth", bare_env(LAB_MODE="local", DATA_DIR=str(tmp_path / "data")), log)
    try:
        url = serving(proc, log)
        r = httpx.get(
            url + "/admin/faults", headers={"Authorization": f"Bearer {DEFAULT_ADMIN_TOKEN}"}
        )
        assert r.status_code == 200, r.text
    finally:
        stop(proc)


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_short_secret_is_refused_at_start_up(tmp_path, name):
    out = refused("payment", bare_env(**{**SECRET_ENV, name: "x" * 31}), tmp_path)
    assert f"{name} is 31 bytes long; at least 32 are required" in out, out


def test_every_shipped_secret_is_known_and_long_enough():
    """The values in settings, fault_spec, .env and compose are the refused set, and the compose
    file starts its services as a local lab (LAB_MODE=local), explicitly."""
    assert {DEV_JWT_SECRET, DEV_INTERNAL_TOKEN, DEFAULT_ADMIN_TOKEN} == SHIPPED_SECRETS
    assert all(len(s.encode()) >= 32 for s in SHIPPED_SECRETS)
    defaults = Settings()
    assert {defaults.jwt_secret, defaults.admin_token, defaults.internal_token} <= SHIPPED_SECRETS
    dotenv = dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-service-env"]
    assert env["LAB_MODE"] == "local"
    for name in SECRET_NAMES:
        assert dotenv[name] in SHIPPED_SECRETS
        default = re.fullmatch(r"\$\{" + name + r":-(.+)\}", env[name]).group(1)
        assert default in SHIPPED_SECRETS


# ------------------------------------------------------------------ the five services


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    with running_services(tmp_path_factory.mktemp("security")) as procs:
        yield procs


def test_a_token_forged_with_the_repository_secret_is_refused(shop):
    token = forged("mallory-is-alice")
    r = httpx.get(shop.url("auth") + "/auth/verify", headers={"Authorization": f"Bearer {token}"})
    assert_error(r, 401, "invalid_token")
    gw = httpx.get(
        shop.url("gateway") + "/api/orders/ord_x", headers={"Authorization": f"Bearer {token}"}
    )
    assert_error(gw, 401, "invalid_token")
    # order verifies the shopper itself: a forged token does not buy, even with the credential
    r = httpx.post(
        shop.url("order") + "/orders",
        json=CART,
        headers={**INTERNAL, "Authorization": f"Bearer {forged('alice')}"},
        timeout=10,
    )
    assert_error(r, 401, "invalid_token")


INTERNAL_ROUTES = [
    ("order", "GET", "/orders", None),
    ("order", "GET", "/orders/ord_x", None),
    ("order", "GET", "/outbox", None),
    ("order", "GET", "/products", None),
    ("order", "POST", "/orders", CART),
    ("payment", "GET", "/payments", None),
    (
        "payment",
        "POST",
        "/payments/charge",
        {"order_id": "o1", "amount_cents": 10_000_000, "currency": "EUR", "card_number": CARD_OK},
    ),
    ("payment", "POST", "/payments/resolve", {"idempotency_key": "k", "order_id": "o1"}),
    ("notification", "GET", "/notifications", None),
    ("notification", "GET", "/notifications/ntf_x", None),
    ("notification", "POST", "/notifications", {"order_id": "o1", "recipient": "alice"}),
]


@pytest.mark.parametrize(("service", "method", "path", "body"), INTERNAL_ROUTES)
def test_internal_routes_need_the_service_credential(shop, service, method, path, body):
    url = shop.url(service) + path
    headers = {"Idempotency-Key": "forged-charge-1"}
    r = httpx.request(method, url, json=body, headers=headers, timeout=10)
    assert_error(r, 401, "service_token_required")
    wrong = {**headers, "X-Internal-Token": "x" * 43}
    r = httpx.request(method, url, json=body, headers=wrong, timeout=10)
    assert_error(r, 403, "service_token_invalid")
    # with the credential (and, for a purchase, the shopper's token) it is let in
    r = httpx.request(
        method, url, json=body, headers={**headers, **as_shopper("alice")}, timeout=10
    )
    assert r.status_code not in (401, 403), r.text


def test_a_charge_without_the_credential_is_not_made(shop):
    """Issue 15: `POST /payments/charge` charged 10,000,000 cents for an arbitrary key."""
    body = {"order_id": "o-nocred", "amount_cents": 10_000_000, "currency": "EUR",
            "card_number": CARD_OK}  # fmt: skip
    r = httpx.post(
        shop.url("payment") + "/payments/charge",
        json=body,
        headers={"Idempotency-Key": "no-credential"},
        timeout=10,
    )
    assert_error(r, 401, "service_token_required")
    charges = httpx.get(
        shop.url("payment") + "/payments", params={"order_id": "o-nocred"}, headers=INTERNAL
    )
    assert charges.status_code == 200 and charges.json() == []


@pytest.mark.parametrize("service", ["order", "payment", "notification", "gateway", "auth"])
def test_health_metrics_and_docs_stay_open(shop, service):
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(shop.url(service) + path, timeout=10).status_code == 200, path


def test_the_shopper_is_a_verified_claim_not_a_body_field(shop):
    order = shop.url("order") + "/orders"
    # no shopper token: the credential alone does not say who buys
    assert_error(httpx.post(order, json=CART, headers=INTERNAL, timeout=10), 401, "missing_token")
    # a `user` in the body is refused, not believed
    r = httpx.post(order, json={**CART, "user": "bob"}, headers=as_shopper("alice"), timeout=10)
    assert_error(r, 422, "validation_error")
    # through the gateway: the order belongs to the token's subject
    login = httpx.post(
        shop.url("gateway") + "/api/login",
        json={"username": "bob", "password": "builder"},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    r = httpx.post(
        shop.url("gateway") + "/api/checkout",
        json={**CART, "user": "alice"},  # the gateway's model forbids it as well
        headers=bearer,
        timeout=10,
    )
    assert_error(r, 422, "validation_error")
    r = httpx.post(shop.url("gateway") + "/api/checkout", json=CART, headers=bearer, timeout=10)
    assert r.status_code == 201, r.text
    stored = httpx.get(order + "/" + r.json()["order_id"], headers=INTERNAL, timeout=10)
    assert stored.json()["user"] == "bob"
    # a token signed with the lab's own key for alice is alice, whoever sends it
    r = httpx.post(order, json=CART, headers=as_shopper("alice"), timeout=10)
    assert r.status_code == 201 and r.json()["user"] == "alice", r.text
    expired = {**INTERNAL, "Authorization": f"Bearer {shopper_token('alice', ttl=-60)}"}
    assert_error(httpx.post(order, json=CART, headers=expired, timeout=10), 401, "token_expired")


# ----------------------------------------------------------------------- login limits


def _login(url: str, user: str, password: str, **headers: str) -> httpx.Response:
    return httpx.post(
        url + "/auth/login", json={"username": user, "password": password}, headers=headers,
        timeout=15,
    )  # fmt: skip


def test_login_limits_answer_429_with_retry_after_and_are_counted(tmp_path):
    with running_services(
        tmp_path,
        names=("auth",),
        LOGIN_ACCOUNT_FAILURES="3",
        LOGIN_CLIENT_ATTEMPTS="8",
        LOGIN_CLIENT_WINDOW_SECONDS="600",
    ) as procs:
        url = procs.url("auth")
        # per account: three wrong passwords, then the account waits (even the right one)
        for _ in range(3):
            assert_error(_login(url, "bob", "guess"), 401, "invalid_credentials")
        for password in ("guess", "builder"):
            r = _login(url, "bob", password)
            body = assert_error(r, 429, "too_many_logins")
            assert 1 <= int(r.headers["Retry-After"]) <= 300, r.headers
            assert "failed" in body["message"]
        metrics = httpx.get(url + "/metrics").text
        assert metric(metrics, "auth_login_rejections_total", reason="account_limit") == 2
        assert metric(metrics, "auth_logins_total", outcome="failure") == 3  # none hashed after

        # per client: 8 attempts in the window, 3 used above; alice gets 5, then waits
        statuses = [_login(url, "alice", "wonderland").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429], statuses
        r = _login(url, "alice", "wonderland")
        assert_error(r, 429, "too_many_logins")
        assert 1 <= int(r.headers["Retry-After"]) <= 600
        # a forwarded client address counts only from a holder of the service credential
        forged_addr = {"X-Client-Address": "203.0.113.7"}
        assert _login(url, "alice", "wonderland", **forged_addr).status_code == 429
        ok = _login(url, "alice", "wonderland", **forged_addr, **INTERNAL)
        assert ok.status_code == 200, ok.text
        metrics = httpx.get(url + "/metrics").text
        assert metric(metrics, "auth_login_rejections_total", reason="client_limit") == 3


def test_the_gateway_passes_the_429_and_its_retry_after_on(shop):
    gw = shop.url("gateway") + "/api/login"
    wrong = {"username": "nobody-at-all", "password": "guess"}
    limit = Settings().login_account_failures
    assert [httpx.post(gw, json=wrong, timeout=15).status_code for _ in range(limit)] == [
        401
    ] * limit
    r = httpx.post(gw, json=wrong, timeout=15)
    assert_error(r, 429, "too_many_logins")
    assert int(r.headers["Retry-After"]) >= 1
    metrics = httpx.get(shop.url("auth") + "/metrics").text
    assert metric(metrics, "auth_login_rejections_total", reason="account_limit") == 1


def test_parallel_logins_are_bounded_by_the_hashing_pool(tmp_path):
    """One hash at a time, none waiting: a burst of parallel logins is turned away (429 busy)
    rather than hashed 40 at a time."""
    with running_services(
        tmp_path, names=("auth",), LOGIN_HASH_CONCURRENCY="1", LOGIN_HASH_QUEUE="0"
    ) as procs:
        url = procs.url("auth")
        proc = psutil.Process(procs.procs["auth"].pid)
        threads_before = proc.num_threads()
        n = 24
        barrier = threading.Barrier(n)
        statuses: list[int] = []
        peak = [0]

        def one(i: int) -> None:
            with httpx.Client(timeout=30) as client:
                barrier.wait(timeout=30)
                r = client.post(
                    url + "/auth/login",
                    json={"username": f"shopper{i % 50 + 1:02d}", "password": "triagelab"},
                )
                statuses.append(r.status_code)
                peak[0] = max(peak[0], proc.num_threads())

        workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert sorted(set(statuses)) == [200, 429], statuses
        assert statuses.count(200) >= 1
        busy = metric(
            httpx.get(url + "/metrics").text, "auth_login_rejections_total", reason="busy"
        )
        assert busy == statuses.count(429)
        assert peak[0] <= threads_before + 2  # one hashing thread, not one per login


def test_the_labs_own_load_stays_under_the_default_login_limits():
    """Locust (loadtest/locustfile.py) logs each user in once, then again only after a 401 or a
    failed login, at most once per task; tasks come every LOCUST_WAIT_MIN seconds at the
    fastest. A drill with a fault can fail every login or token (auth-401-storm): its users at
    that rate must stay under the per-client limit. A drill without one (traffic-spike) fails
    logins only by overload, which the hashing pool turns away as `busy` and Locust's think
    time spaces out: its users get room for a first login and one retry per window (measured on
    traffic-spike, 120 users: 213 logins in 4 minutes, 17 turned away as busy, none by the
    per-client limit). And the pool's passwords are right, so no account collects failures."""
    s = Settings()
    load = LoadSettings.from_env({})
    drills = [
        yaml.safe_load(p.read_text()) for p in sorted((ROOT / "loadtest/drills").glob("*.yaml"))
    ]
    # A login or a token check passes the gateway and auth only: a fault elsewhere (payment's
    # card-range-errors, 20 users) fails neither, like a drill without faults.
    login_path = {"gateway", "auth"}

    def on_login_path(d: dict) -> bool:
        return any(step["service"] in login_path for step in d["timeline"])

    with_faults = max(d["load"]["users"] for d in drills if on_login_path(d))
    per_window = with_faults * (s.login_client_window_seconds / load.wait_min + 1)
    assert per_window <= s.login_client_attempts, (with_faults, per_window)
    without = max(d["load"]["users"] for d in drills if not on_login_path(d))
    assert without * 2 <= s.login_client_attempts, without
    assert all(DEMO_PASSWORDS.get(u) == pw for u, pw in load.users)


# ------------------------------------------------------------------- the lab's secrets


def test_the_lab_generates_its_secrets_once_0600_and_its_services_use_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
    lab = NativeLab(tmp_path / "lab", Ports.any_free(), env=env, out=lambda _: None)
    try:
        made = lab.check_secrets()
        assert sorted(lab.generated_secrets) == sorted(LAB_SECRETS)
        mode = stat.S_IMODE(lab.secrets_file.stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert all(len(v.encode()) >= 32 and v not in SHIPPED_SECRETS for v in made.values())
        # reused: a second lab object on the same folder (a restart) reads the same values
        again = NativeLab(tmp_path / "lab", Ports.any_free(), env=env, out=lambda _: None)
        assert again.check_secrets() == made and again.generated_secrets == []
        assert again.admin_token() == made["ADMIN_TOKEN"] != DEFAULT_ADMIN_TOKEN
        again.close()

        # the runner's command for a service: a local lab, with this lab's secrets
        argv, proc_env = lab._command("auth", 0, {})
        assert proc_env["LAB_MODE"] == "local"
        assert {n: proc_env[n] for n in LAB_SECRETS} == made
        log = tmp_path / "auth.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(argv, cwd=ROOT, env=proc_env, stdout=fh, stderr=fh)
        try:
            url = serving(proc, log)
            admin = httpx.get(
                url + "/admin/faults", headers={"Authorization": f"Bearer {made['ADMIN_TOKEN']}"}
            )
            assert admin.status_code == 200, admin.text
            shipped = {"Authorization": f"Bearer {DEFAULT_ADMIN_TOKEN}"}
            assert httpx.get(url + "/admin/faults", headers=shipped).status_code in (401, 403)
            token = httpx.post(
                url + "/auth/login", json={"username": "alice", "password": "wonderland"}
            ).json()["access_token"]
            jwt.decode(token, made["JWT_SECRET"], algorithms=["HS256"], issuer=ISSUER)
        finally:
            stop(proc)
    finally:
        lab.close()


def test_the_lab_refuses_a_short_secret_from_the_environment(tmp_path):
    env = {**os.environ, "JWT_SECRET": "short"}
    lab = NativeLab(tmp_path / "lab", Ports.any_free(), env=env, out=lambda _: None)
    try:
        with pytest.raises(LabError, match=r"JWT_SECRET from your environment is 5 bytes long"):
            lab.check_secrets()
    finally:
        lab.close()


def test_a_secrets_file_readable_by_others_is_made_private(tmp_path):
    lab = NativeLab(tmp_path / "lab", Ports.any_free(), out=lambda _: None)
    try:
        lab.check_secrets()
        os.chmod(lab.secrets_file, 0o644)
        lab.secrets()
        assert stat.S_IMODE(lab.secrets_file.stat().st_mode) == 0o600
    finally:
        lab.close()


def test_the_test_helpers_speak_with_the_sessions_own_admin_token(shop):
    """tests/support.py starts services with TEST_SECRETS: its ADMIN works, the constant not."""
    url = shop.url("payment") + "/admin/faults"
    assert httpx.get(url, headers=ADMIN).status_code == 200
    shipped = {"Authorization": f"Bearer {DEFAULT_ADMIN_TOKEN}"}
    assert httpx.get(url, headers=shipped).status_code in (401, 403)
