"""Hostile input against real processes (issue 15, part A): the admin API, input validation,
correlation ids, the alert receiver and `labctl clean`.

Every service runs as a real uvicorn process on 127.0.0.1 (tests/support.py) once for the
module. The last test is one hostile-input sweep over every route of all five services,
generated from their OpenAPI documents: whatever it sends, a service answers a 4xx with the
standard error body, never a 5xx.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import httpx
import jwt
import pytest

from services.kit import faults
from services.kit.errors import ServiceError
from tests.support import ADMIN, INTERNAL, ROOT, TEST_SECRETS, running_services, wait_until

pytestmark = pytest.mark.integration

SERVICES = ("gateway", "auth", "order", "payment", "notification")
CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
TIMEOUT = 10.0  # generous: no assertion is about speed, only about an answer coming at all


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {
        "PAYMENT_LATENCY_MEDIAN_MS": "0",
        "NOTIFICATION_LATENCY_MEDIAN_MS": "0",
        "NOTIFICATION_FAILURE_RATE": "0",
        # The sweep logs in many times from one address: the login limits are not under test.
        "LOGIN_CLIENT_ATTEMPTS": "1000000",
        "LOGIN_ACCOUNT_FAILURES": "1000000",
    }
    with running_services(tmp_path_factory.mktemp("security-input"), **env) as procs:
        yield procs


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as c:
        yield c


@pytest.fixture(scope="module")
def token(lab, client) -> str:
    r = client.post(
        lab.url("gateway") + "/api/login", json={"username": "alice", "password": "wonderland"}
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def standard_error(r: httpx.Response) -> str | None:
    """Why `r` is not the standard error body (None when it is)."""
    try:
        body = r.json()
    except ValueError:
        return f"not JSON: {r.text[:120]!r}"
    if not isinstance(body, dict):
        return f"not an object: {body!r:.120}"
    if not isinstance(body.get("code"), str) or not body["code"]:
        return f"no code: {body!r:.200}"
    if not isinstance(body.get("message"), str) or "correlation_id" not in body:
        return f"no message or correlation_id: {body!r:.200}"
    return None


def assert_4xx(r: httpx.Response, status: int | None = None, code: str | None = None) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:300])
    problem = standard_error(r)
    assert problem is None, problem
    body = r.json()
    if code is not None:
        assert body["code"] == code, body
    return body


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- admin API ----------------------------------------------------------------------------


def _set_fault(client, url: str, **fault) -> httpx.Response:
    return client.post(url + "/admin/faults", json={"fault": fault}, headers=ADMIN)


def test_admin_token_is_compared_in_constant_time(lab, client):
    url = lab.url("payment") + "/admin/faults"
    right = TEST_SECRETS["admin_token"]
    # The same length, a shared prefix, and bytes that are not ASCII: each a 403, never a 500
    # (hmac.compare_digest on str refuses non-ASCII; the guard compares bytes).
    for wrong in (right[:-1] + ("A" if right[-1] != "A" else "B"), right[:8], "x" * len(right)):
        r = client.get(url, headers={"Authorization": f"Bearer {wrong}"})
        assert_4xx(r, 403, "forbidden")
    r = client.get(url, headers={"Authorization": b"Bearer \xff\xfe\xe9" + right.encode()})
    assert_4xx(r, 403, "forbidden")
    assert client.get(url, headers=ADMIN).status_code == 200

    # The comparison itself is hmac.compare_digest (timing is not measurable reliably here).
    with mock.patch.object(faults.hmac, "compare_digest", wraps=faults.hmac.compare_digest) as cd:
        guard = faults.admin_guard(right)
        request = mock.Mock(scope={"server": ("127.0.0.1", 1)})
        with pytest.raises(ServiceError):
            anyio.run(guard, request, "Bearer nope")
        anyio.run(guard, request, f"Bearer {right}")
    assert cd.call_count == 2


def test_faults_are_capped_per_service(lab, client):
    url = lab.url("notification")
    try:
        ids = []
        for i in range(8):  # MAX_ACTIVE_FAULTS, on a path nothing calls
            r = _set_fault(client, url, kind="latency", ms=1, route=f"/nowhere/{i}", ttl_seconds=60)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        r = _set_fault(client, url, kind="latency", ms=1, route="/nowhere/9", ttl_seconds=60)
        body = assert_4xx(r, 409, "fault_limit_reached")
        assert body["details"]["limit"] == 8
        client.delete(url + "/admin/faults", headers=ADMIN)

        # memory_growth: the sum of max_mb is capped (the first grows 1 MB/s until cleared).
        r = _set_fault(
            client, url, kind="memory_growth", mb_per_second=1, max_mb=1500, ttl_seconds=30
        )
        assert r.status_code == 201, r.text
        r = _set_fault(
            client, url, kind="memory_growth", mb_per_second=1, max_mb=600, ttl_seconds=30
        )
        assert_4xx(r, 409, "fault_memory_limit_reached")
        client.delete(url + "/admin/faults", headers=ADMIN)

        # cpu_burn: at most two threads (load 1% each: the test burns next to nothing).
        for _ in range(2):
            r = _set_fault(client, url, kind="cpu_burn", load=0.01, ttl_seconds=30)
            assert r.status_code == 201, r.text
        r = _set_fault(client, url, kind="cpu_burn", load=0.01, ttl_seconds=30)
        assert_4xx(r, 409, "fault_cpu_limit_reached")
        listed = client.get(url + "/admin/faults", headers=ADMIN).json()["faults"]
        assert [f["kind"] for f in listed] == ["cpu_burn", "cpu_burn"]
    finally:
        client.delete(url + "/admin/faults", headers=ADMIN)


@pytest.mark.parametrize(
    "route",
    ["^(a|aa)+$", "(a+)+", ".*", "/api/.*", "/a/*/b", "/orders/{id", "payments", "^/a.b", "/x{y}z"],
)
def test_a_regex_route_is_refused_when_set(lab, client, route):
    r = _set_fault(client, lab.url("auth"), kind="latency", ms=1, route=route)
    body = assert_4xx(r, 422, "validation_error")
    assert "route" in body["message"]


def test_a_hostile_route_cannot_freeze_the_service(lab, client):
    """The pattern that froze auth for 101 s, with the path that triggers it: refused, and auth
    keeps answering at once."""
    url = lab.url("auth")
    r = _set_fault(client, url, kind="error", status=503, route="^(a|aa)+$")
    assert_4xx(r, 422, "validation_error")
    assert client.get(url + "/admin/faults", headers=ADMIN).json()["faults"] == []
    r = client.get(url + "/" + "a" * 30 + "!", timeout=5.0)  # 404, long before the deadline
    assert_4xx(r, 404)


def test_route_forms_match_as_documented(lab, client):
    url = lab.url("order")
    try:
        for route in ("/orders/{order_id}", "/products*", "/outbox"):
            assert _set_fault(client, url, kind="error", status=503, route=route).status_code == 201
        hit = ["/orders/ord_1", "/products", "/outbox"]
        miss = ["/orders", "/orders/ord_1/x", "/outbox/x"]
        for path in hit:
            assert client.get(url + path, headers=INTERNAL).status_code == 503, path
        for path in miss:
            assert client.get(url + path, headers=INTERNAL).status_code != 503, path
    finally:
        client.delete(url + "/admin/faults", headers=ADMIN)


# --- input ----------------------------------------------------------------------------------

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    "card", [CARD_DECLINED.translate(ARABIC_INDIC), CARD_OK.translate(FULLWIDTH)]
)
def test_card_numbers_are_ascii_digits_only(lab, client, token, card):
    cart = {"items": [{"product_id": "sku-mug", "quantity": 1}], "card_number": card}
    r = client.post(
        lab.url("gateway") + "/api/checkout",
        json=cart,
        headers={"Authorization": f"Bearer {token}"},
    )
    body = assert_4xx(r, 422, "validation_error")
    assert body["details"][0]["loc"][-1] == "card_number"
    order_id = f"ord_digits_{ord(card[0])}"
    charge = {"order_id": order_id, "amount_cents": 100, "currency": "EUR", "card_number": card}
    r = client.post(
        lab.url("payment") + "/payments/charge",
        json=charge,
        headers={**INTERNAL, "Idempotency-Key": f"digits-{ord(card[0])}"},
    )
    body = assert_4xx(r, 422, "validation_error")
    assert body["details"][0]["loc"][-1] == "card_number"
    charges = client.get(
        lab.url("payment") + "/payments", params={"order_id": order_id}, headers=INTERNAL
    )
    assert charges.status_code == 200 and charges.json() == []
    # The same card in ASCII digits still meets the decline list / is approved.
    ascii_card = card.translate({ord(c): str(i) for i, c in enumerate("٠١٢٣٤٥٦٧٨٩")}).translate(
        {ord(c): str(i) for i, c in enumerate("０１２３４５６７８９")}
    )
    r = client.post(
        lab.url("payment") + "/payments/charge",
        json={**charge, "card_number": ascii_card},
        headers={**INTERNAL, "Idempotency-Key": "ascii-" + ascii_card},
    )
    assert r.status_code == (402 if ascii_card == CARD_DECLINED else 201), r.text


def test_gateway_validates_and_escapes_the_order_id(lab, client, token):
    auth = {"Authorization": f"Bearer {token}"}
    order_metrics = lab.url("order") + "/metrics"

    def order_lookups() -> float:
        text = client.get(order_metrics).text
        return metric_sum(text, "http_requests_total", method="GET", route="/orders/{order_id}")

    before = order_lookups()
    r = client.get(lab.url("gateway") + "/api/orders/%00%ff", headers=auth)
    assert_4xx(r)  # was a 500: httpx InvalidURL
    for hostile in ("x%3Fstatus%3Dpaid", "x%23frag", "..%2F..%2Fpayments", "x%20y", "é", "a" * 41):
        r = client.get(lab.url("gateway") + "/api/orders/" + hostile, headers=auth)
        assert_4xx(r)
    # None of them reached order: no query string or path of the client's in the internal call.
    assert order_lookups() == before
    r = client.get(lab.url("gateway") + "/api/orders/ord_doesnotexist", headers=auth)
    assert_4xx(r, 404)
    assert order_lookups() == before + 1


def _signed(**claims) -> str:
    base = {"sub": "alice", "iss": "triagelab-auth", "iat": int(time.time())}
    return jwt.encode({**base, **claims}, TEST_SECRETS["jwt_secret"], algorithm="HS256")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": time.time() + 600.5},  # a float exp: was a 500 building the answer
        {"exp": float("inf")},  # "Infinity" in the JSON: int() overflows in PyJWT
        {"exp": int(time.time()) + 600, "sub": "x" * 500},
        {"exp": str(int(time.time()) + 600)},
    ],
    ids=["float-exp", "infinite-exp", "huge-sub", "string-exp"],
)
def test_a_signed_token_with_odd_claims_is_401(lab, client, claims):
    bearer = {"Authorization": "Bearer " + _signed(**claims)}
    r = client.get(lab.url("auth") + "/auth/verify", headers={**INTERNAL, **bearer})
    assert_4xx(r, 401)
    r = client.get(lab.url("gateway") + "/api/orders/ord_x", headers=bearer)
    assert_4xx(r, 401)
    good = {"Authorization": "Bearer " + _signed(exp=int(time.time()) + 600)}
    assert (
        client.get(lab.url("auth") + "/auth/verify", headers={**INTERNAL, **good}).status_code
        == 200
    )


@pytest.mark.parametrize(
    "cid",
    ["a" * 65, "a" * 128, "<script>alert(1)</script>", "id with spaces", "ünïcode", "x;y=1", ""],
)
def test_a_hostile_correlation_id_is_replaced(lab, client, cid):
    r = client.get(lab.url("gateway") + "/api/products", headers={"X-Correlation-ID": cid.encode()})
    assert r.status_code == 200
    answered = r.headers["x-correlation-id"]
    assert answered != cid and CID.match(answered), answered
    r = client.get(
        lab.url("gateway") + "/api/orders/ord_x", headers={"X-Correlation-ID": cid.encode()}
    )
    body = assert_4xx(r, 401)
    assert body["correlation_id"] == r.headers["x-correlation-id"] != cid


def test_a_plain_correlation_id_is_kept_and_the_hostile_one_never_logged(lab, client):
    plain = "sweep-cid-0123456789abcdef:1.x_Y"
    r = client.get(lab.url("gateway") + "/api/products", headers={"X-Correlation-ID": plain})
    assert r.headers["x-correlation-id"] == plain
    hostile = "HOSTILE-" + "z" * 120
    client.get(lab.url("gateway") + "/api/products", headers={"X-Correlation-ID": hostile})
    client.get(lab.url("gateway") + "/api/products", headers={"X-Correlation-ID": plain + "2"})
    log = lab.log_file("gateway")
    wait_until(lambda: plain + "2" in log.read_text(), timeout=10, what="the gateway's access line")
    assert plain in log.read_text()
    assert "HOSTILE-" not in log.read_text()


# --- the alert receiver -----------------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path) -> Iterator[tuple[int, Path, subprocess.Popen]]:
    alerts = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl.native.receiver", "--port", "0", "--file", str(alerts)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = json.loads(proc.stdout.readline())  # "receiver listening", with the bound port
        assert first["event"] == "receiver listening", first
        yield first["port"], alerts, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _raw_post(port: int, head: str, body: bytes = b"") -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line, "the receiver closed the connection without an answer"
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")


def _length(data: bytes) -> int:
    m = re.search(rb"(?i)content-length:\s*(\d+)", data.partition(b"\r\n\r\n")[0])
    return int(m.group(1)) if m else 0


def _hook(length: str | None, body: bytes) -> tuple[str, bytes]:
    head = "POST /hook/page HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
    if length is not None:
        head += f"\r\nContent-Length: {length}"
    return head, body


def _alert(labels: Any) -> bytes:
    return json.dumps({"status": "firing", "alerts": [{"labels": labels}]}).encode()


@pytest.mark.parametrize(
    ("length", "body", "reason"),
    [
        ("abc", b"{}", "Content-Length"),
        ("-5", b"{}", "Content-Length"),
        ("1e3", b"{}", "Content-Length"),
        ("99999999999", b"{}", "Content-Length"),
        (None, b"", "Content-Length"),
        ("auto", _alert(["not", "an", "object"]), "labels"),
        ("auto", _alert("x"), "labels"),
        ("auto", _alert({"alertname": 5}), "alertname"),
        ("auto", _alert({"alertname": {"a": 1}}), "alertname"),
        ("auto", b'{"alerts": "x"}', "alerts"),
        ("auto", b'{"alerts": [1]}', "alerts[0]"),
        ("auto", b'{"status": ', "JSON"),
        ("auto", b"\xff\xfe", "JSON"),
        ("auto", b"[1, 2]", "object"),
        ("auto", b"[" * 100_000, "JSON"),
    ],
)
def test_the_receiver_answers_400_to_malformed_input_and_keeps_running(
    receiver, length, body, reason
):
    port, alerts, proc = receiver
    head, body = _hook(str(len(body)) if length == "auto" else length, body)
    status, answer = _raw_post(port, head, body)
    assert status == 400, answer
    assert reason in answer["error"], answer
    assert proc.poll() is None
    good = _alert({"alertname": "ServiceDown"})
    assert _raw_post(port, *_hook(str(len(good)), good)) == (200, {"ok": True})
    assert [r["alertnames"] for r in map(json.loads, alerts.read_text().splitlines())] == [
        ["ServiceDown"]
    ]


# --- labctl clean -------------------------------------------------------------------------------


def _clean(lab_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAB_DIR": str(lab_dir)}
    return subprocess.run(
        [sys.executable, "-m", "labctl", "clean", "--mode", "native"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_labctl_clean_refuses_a_folder_that_is_not_a_lab(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = _clean(precious)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "state.json" in result.stderr and "refusing" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_labctl_clean_deletes_a_lab_folder(tmp_path):
    lab_dir = tmp_path / "lab"
    (lab_dir / "logs").mkdir(parents=True)
    (lab_dir / "state.json").write_text('{"components": {}}\n')
    (lab_dir / "logs" / "gateway.log").write_text("{}\n")
    result = _clean(lab_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not lab_dir.exists()


# --- the sweep ------------------------------------------------------------------------------------
#
# From each service's /openapi.json: every operation, a valid baseline request built from its
# schemas, then hostile variants of its path parameters, query, headers and body. "reject"
# variants must be a 4xx with the standard error body; "survive" variants (an extra field, a
# long value where no limit is declared) may succeed, but never with a 5xx, and any 4xx they
# get has the standard body too.

NAMED = {  # values a schema cannot say (a Luhn-valid card, a product that exists)
    "card_number": CARD_OK,
    "product_id": "sku-mug",
    "username": "alice",
    "password": "wonderland",
    "order_id": "ord_sweep",
    "recipient": "alice",
    "quantity": 1,
}
_serial = itertools.count()


def _deref(schema: dict, doc: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def _branches(schema: dict, doc: dict) -> tuple[dict, bool]:
    """The non-null alternative of an anyOf/oneOf, and whether null is allowed."""
    schema = _deref(schema, doc)
    options = schema.get("anyOf") or schema.get("oneOf")
    if not options:
        return schema, schema.get("type") == "null"
    real = [_deref(o, doc) for o in options if _deref(o, doc).get("type") != "null"]
    return (real[0] if real else {}), len(real) < len(options)


def example(schema: dict, doc: dict, name: str = "") -> Any:
    """A valid value for `schema` (field `name`)."""
    schema, _ = _branches(schema, doc)
    if name in NAMED:
        return NAMED[name]
    if name == "idempotency_key":
        return f"sweep-{next(_serial)}"
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: example(v, doc, k) for k, v in props.items() if k in schema.get("required", ())}
    if kind == "array":
        return [example(schema.get("items", {}), doc)] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return max(1, schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind == "number":
        return float(max(1, schema.get("minimum", 1)))
    if kind == "boolean":
        return True
    return "a" * max(1, schema.get("minLength", 1))


def hostile_values(schema: dict, doc: dict) -> list[tuple[str, Any, bool]]:
    """(label, value, must_reject) for one JSON field."""
    schema, nullable = _branches(schema, doc)
    kind = schema.get("type") or ("object" if "properties" in schema else None)
    out: list[tuple[str, Any, bool]] = []
    if not nullable:
        out.append(("null", None, True))
    wrong = {
        "string": [123, 1.5, [], {}, True],
        "integer": ["abc", 1.5, [], {}, "1e3"],
        "number": ["abc", [], {}],
        "array": ["x", {}, 5],
        "object": ["x", [], 5],
        "boolean": ["maybe", [], {}],
    }.get(kind, [])
    out += [(f"wrong type {type(v).__name__}", v, True) for v in wrong]
    if kind == "string":
        limited = "maxLength" in schema or "pattern" in schema or "enum" in schema
        if "maxLength" in schema:
            out.append(("one too long", "a" * (schema["maxLength"] + 1), True))
        out.append(("huge", "a" * 20_000, limited))
        if schema.get("minLength", 0) >= 1 or "pattern" in schema or "enum" in schema:
            out.append(("empty", "", True))
        strict = "pattern" in schema or "enum" in schema or "const" in schema
        for label, text in (
            ("NUL", "a\x00b"),
            ("control", "\x1b[31m\r\n"),
            ("bidi", "\u202eevil"),
            ("emoji", "💳"),
            ("arabic digits", "٤٢٤٢"),
        ):
            out.append((label, text, strict))
    if kind in ("integer", "number"):
        if "maximum" in schema:
            out.append(("above maximum", schema["maximum"] + 1, True))
        if "minimum" in schema:
            out.append(("below minimum", schema["minimum"] - 1, True))
        if "exclusiveMinimum" in schema:
            out.append(("at exclusive minimum", schema["exclusiveMinimum"], True))
        out.append(("huge", 10**30, "maximum" in schema))
        out.append(
            ("negative huge", -(10**30), "minimum" in schema or "exclusiveMinimum" in schema)
        )
    if kind == "array" and schema.get("minItems", 0) >= 1:
        out.append(("empty list", [], True))
    if kind == "array" and "maxItems" in schema:
        out.append(("too many", [None] * (schema["maxItems"] + 1), True))
    return out


def body_variants(schema: dict, doc: dict) -> Iterator[tuple[str, Any, bool]]:
    """(label, body, must_reject): the body with one thing wrong at a time, nested too."""
    base = example(schema, doc)
    yield "baseline", base, False

    def walk(node_schema: dict, path: list[Any], depth: int) -> Iterator[tuple[str, Any, bool]]:
        node_schema, _ = _branches(node_schema, doc)
        if node_schema.get("type") == "array" and depth < 3:
            yield from walk(node_schema.get("items", {}), [*path, 0], depth + 1)
            return
        props = node_schema.get("properties")
        if not props or depth >= 3:
            return
        required = set(node_schema.get("required", ()))
        where = ".".join(map(str, path)) or "body"
        for field, field_schema in props.items():
            if field in required:
                yield f"{where}: missing {field}", _edit(base, path, field, delete=True), True
            for label, value, reject in hostile_values(field_schema, doc):
                yield f"{where}.{field}: {label}", _edit(base, path, field, value), reject
            yield from walk(field_schema, [*path, field], depth + 1)
        closed = node_schema.get("additionalProperties") is False
        yield f"{where}: extra field", _edit(base, path, "zz_extra", "x"), closed

    yield from walk(schema, [], 0)


def _edit(base: Any, path: list[Any], field: str, value: Any = None, delete: bool = False) -> Any:
    body = copy.deepcopy(base)
    node = body
    for step in path:
        node = node[step]
    if not isinstance(node, dict):
        return body
    if delete:
        node.pop(field, None)
    else:
        node[field] = value
    return body


RAW_BODIES = [  # (label, bytes, content type)
    ("malformed JSON", b'{"items": [', "application/json"),
    ("truncated string", b'{"a": "b', "application/json"),
    ("not UTF-8", b"\xff\xfe{\x00}", "application/json"),
    ("NaN", b"NaN", "application/json"),
    ("lone surrogate", b'{"username": "\\ud800", "password": "\\udfff"}', "application/json"),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "application/json"),
    ("a list", b"[]", "application/json"),
    ("a string", b'"x"', "application/json"),
    ("null", b"null", "application/json"),
    ("a number", b"1e999", "application/json"),
    ("empty", b"", "application/json"),
    ("text/plain", b"hello", "text/plain"),
    ("form", b"a=1&b=2", "application/x-www-form-urlencoded"),
    ("too large", b'{"a": "' + b"x" * 70_000 + b'"}', "application/json"),
]

PATH_VALUES = [  # raw, already percent-encoded: each must be a 4xx
    "%00%ff",
    "x%3Fstatus%3Dpaid",
    "x%23fragment",
    "..%2F..%2Fadmin%2Ffaults",
    "%E2%80%AE" + "evil",
    "%ED%A0%80",  # a surrogate, UTF-8 encoded: not UTF-8
    "%F0%9F%92%B3",
    "a" * 2000,
    "%20",
    "%0d%0aX-Injected:%201",
]


def query_values(schema: dict, doc: dict) -> list[tuple[str, str, bool]]:
    """(label, raw percent-encoded value, must_reject) for one query parameter."""
    schema, _ = _branches(schema, doc)
    kind = schema.get("type")
    out = [("NUL", "%00", True), ("not UTF-8", "%ff%fe", True), ("bidi", "%E2%80%AE", True)]
    out.append(("CRLF", "%0d%0a", True))
    if kind == "integer":
        out += [("text", "abc", True), ("float", "1.5", True)]
        out.append(("huge", "9" * 40, "maximum" in schema))
    if kind == "number":
        out += [("text", "abc", True), ("inf", "1e999", False), ("nan", "nan", "minimum" in schema)]
        out.append(("negative", "-1", schema.get("minimum", -1) >= 0))
    if "enum" in schema or "const" in schema:
        out.append(("not in the enum", "bogus", True))
    if kind == "string":
        if "maxLength" in schema:
            out.append(("one too long", "a" * (schema["maxLength"] + 1), True))
        out.append(("huge", "a" * 6000, "maxLength" in schema))
    return out


def header_values(name: str, schema: dict, doc: dict) -> list[tuple[str, bytes, bool]]:
    schema, _ = _branches(schema, doc)
    out: list[tuple[str, bytes, bool]] = []
    if "maxLength" in schema:
        out.append(("oversized", b"a" * (schema["maxLength"] + 1), True))
    strict = "pattern" in schema or name == "authorization"
    out += [
        ("latin-1 bytes", b"\xff\xfe\xe9", strict),
        ("space", b"a b", strict),
        ("empty", b"", strict or schema.get("minLength", 0) >= 1),
    ]
    if name == "authorization":
        out += [
            ("basic", b"Basic YWxpY2U6d29uZGVybGFuZA==", True),
            ("garbage", b"Bearer a.b.c", True),
        ]
    return out


class Operation:
    """One operation of a service's OpenAPI document, and how to call it with one thing wrong."""

    def __init__(self, base_url: str, template: str, method: str, op: dict, doc: dict) -> None:
        self.base_url, self.template, self.method, self.doc = base_url, template, method, doc
        params = op.get("parameters", [])
        self.path_params = [p["name"] for p in params if p["in"] == "path"]
        self.queries = [p for p in params if p["in"] == "query"]
        self.headers_declared = [p for p in params if p["in"] == "header"]
        content = op.get("requestBody", {}).get("content", {})
        self.body_schema = content.get("application/json", {}).get("schema")

    def url(self, path_values: dict[str, str] | None = None, query: str = "") -> str:
        path = self.template
        for name in self.path_params:
            path = path.replace("{" + name + "}", (path_values or {}).get(name, "ord_sweep"))
        return self.base_url + path + (f"?{query}" if query else "")

    def headers(self, common: dict, overrides: dict | None = None) -> dict:
        out = {k.lower(): v for k, v in common.items()}
        for p in self.headers_declared:
            if p["required"] or p["name"].lower() == "idempotency-key":
                out[p["name"].lower()] = f"sweep-{next(_serial)}"  # a fresh key: no replays
        out.update({k.lower(): v for k, v in (overrides or {}).items()})
        return {k: v for k, v in out.items() if v is not None}

    def variants(self) -> Iterator[tuple[str, bool, dict, dict]]:
        """(what, must_reject, url arguments, request arguments), the baseline first."""
        kw: dict[str, Any] = {}
        if self.body_schema:
            kw = {"json": example(self.body_schema, self.doc)}
        yield "baseline", False, {}, kw
        for name in self.path_params:
            for raw in PATH_VALUES:
                yield f"path {name}={raw[:30]}", True, {"path_values": {name: raw}}, kw
        for q in self.queries:
            for label, raw, reject in query_values(q["schema"], self.doc):
                yield f"query {q['name']}: {label}", reject, {"query": f"{q['name']}={raw}"}, kw
        yield "unknown query parameter", False, {"query": "zz_extra=1"}, kw
        yield "NUL in an unknown query parameter", True, {"query": "zz=%00"}, kw
        for h in self.headers_declared:
            name = h["name"]
            if h["required"]:
                yield f"header {name} missing", True, {}, {**kw, "hdrs": {name: None}}
            for label, value, reject in header_values(name.lower(), h["schema"], self.doc):
                yield f"header {name}: {label}", reject, {}, {**kw, "hdrs": {name: value}}
        for label, name, value in (
            ("oversized unknown header", "X-Junk", "j" * 8000),
            ("hostile correlation id", "X-Correlation-ID", "<" * 300),
            ("absurd budget", "X-Request-Budget-Ms", "9" * 40),
        ):
            yield label, False, {}, {**kw, "hdrs": {name: value}}
        if self.body_schema:
            for label, body, reject in body_variants(self.body_schema, self.doc):
                if label != "baseline":
                    yield f"body {label}", reject, {}, {"json": body}
            for label, raw, ctype in RAW_BODIES:
                yield (
                    f"raw body: {label}",
                    True,
                    {},
                    {"hdrs": {"Content-Type": ctype}, "content": raw},
                )


ADMIN_BODIES = [  # the admin API is not in the OpenAPI documents: its hostile bodies, by hand
    ("malformed", b'{"fault": '),
    ("fault a list", b'{"fault": []}'),
    ("no kind", b'{"fault": {}}'),
    ("wrong type", b'{"fault": {"kind": "latency", "ms": "slow"}}'),
    ("NaN", b'{"fault": {"kind": "latency", "ms": NaN}}'),
    ("infinite ttl", b'{"fault": {"kind": "latency", "ms": 1, "ttl_seconds": 1e999}}'),
    ("regex route", b'{"fault": {"kind": "error", "route": "^(a|aa)+$"}}'),
    ("huge route", b'{"fault": {"kind": "error", "route": "/' + b"a" * 5000 + b'"}}'),
]


def test_hostile_input_sweep_over_every_route(lab, client, token):
    problems: list[str] = []
    sent = 0
    deadline = time.monotonic() + 300  # a bound, not a timed assertion: the sweep takes ~30 s
    common = {**INTERNAL, "Authorization": f"Bearer {token}"}

    def check(service: str, what: str, reject: bool, **request: Any) -> httpx.Response | None:
        nonlocal sent
        assert time.monotonic() < deadline, "the sweep ran past its bound"
        sent += 1
        target = httpx.URL(request["url"]).raw_path.decode("ascii", "replace")[:80]
        label = f"{service} {request['method']} {target} {what}"
        try:
            r = client.request(**request)
        except httpx.HTTPError as exc:
            problems.append(f"{label}: no answer ({exc!r})")
            return None
        if r.status_code >= 500:
            problems.append(f"{label}: {r.status_code} {r.text[:160]}")
        elif reject and not 400 <= r.status_code < 500:
            problems.append(f"{label}: expected a 4xx, got {r.status_code} {r.text[:120]}")
        elif r.status_code >= 400 and (problem := standard_error(r)):
            problems.append(f"{label}: {r.status_code} is not the standard body: {problem}")
        elif not CID.match(r.headers.get("x-correlation-id", "")):
            problems.append(f"{label}: bad X-Correlation-ID {r.headers.get('x-correlation-id')!r}")
        return r

    operations = 0
    for service in SERVICES:
        base_url = lab.url(service)
        doc = client.get(base_url + "/openapi.json").json()
        for template, methods in doc["paths"].items():
            for method, spec in methods.items():
                operations += 1
                op = Operation(base_url, template, method.upper(), spec, doc)
                for what, reject, where, request in op.variants():
                    request = dict(request)
                    hdrs = request.pop("hdrs", None)
                    r = check(
                        service,
                        what,
                        reject,
                        method=op.method,
                        url=op.url(**where),
                        headers=op.headers(common, hdrs),
                        **request,
                    )
                    if what == "baseline" and r is not None and r.status_code == 422:
                        problems.append(f"{service} {op.method} {template}: invalid baseline")
            other = next(
                m for m in ("PUT", "PATCH", "DELETE") if m not in {*map(str.upper, methods)}
            )
            check(service, "wrong method", True, method=other, url=op.url(), headers=common)

    for service in SERVICES:
        admin = lab.url(service) + "/admin/faults"
        json_admin = {**ADMIN, "Content-Type": "application/json"}
        for label, raw in ADMIN_BODIES:
            check(
                service,
                f"admin {label}",
                True,
                method="POST",
                url=admin,
                headers=json_admin,
                content=raw,
            )
        check(service, "admin bad id", True, method="DELETE", url=admin + "/%00%ff", headers=ADMIN)
        check(service, "admin no token", True, method="GET", url=admin)
        latin1 = {"Authorization": b"Bearer \xff"}
        check(service, "admin latin-1 token", True, method="GET", url=admin, headers=latin1)
        left = client.get(admin, headers=ADMIN).json()["faults"]
        if left:
            problems.append(f"{service}: hostile admin bodies set faults: {left}")
            client.delete(admin, headers=ADMIN)

    assert operations >= 15, f"only {operations} operations found in the OpenAPI documents"
    assert not problems, f"{len(problems)} of {sent} requests:\n" + "\n".join(problems)
