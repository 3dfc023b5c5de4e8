"""Redaction (issue 15): no card number or credential leaves a process in a log line or a span.

Hostile cases for the one set of rules in services/kit/redact.py, applied by services/kit/logs.py
to every log line and by services/kit/tracing.py to every span before any exporter (the JSON
span file and OTLP). The OTLP checks decode what a real HTTP receiver on 127.0.0.1 was sent:
what would have left the process. The last test runs a real service process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import gzip
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link
from pydantic import BaseModel, Field, ValidationError

from services.kit import Settings
from services.kit.checkout import luhn_valid as luhn_ok
from services.kit.logs import configure_logging, get_logger
from services.kit.redact import redact_any, redact_text
from services.kit.tracing import RedactingSpanExporter, build_tracer_provider, redact_span
from tests.support import running_services, wait_until


def with_check_digit(prefix: str) -> str:
    """`prefix` + the digit that makes it Luhn-valid."""
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


PAN12 = with_check_digit("42424242424")  # 12 digits: passes the schema (^\d{12,19}$ + Luhn)
PAN16 = "4111111111111111"
PAN19 = with_check_digit("622222222222222222")
AMEX = "378282246310005"
ARABIC = PAN16.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))  # Arabic-Indic digits
PANS = (PAN12, PAN16, PAN19, AMEX)
EPOCH_MS = with_check_digit("176460019512")  # Unix time in ms (13 digits), Luhn-valid
EPOCH_NS = with_check_digit("176460019512345678")  # in ns (19 digits), Luhn-valid
PASSWORD = "hunter2-Zq9"  # a password that must never be written


def assert_clean(text: str, *secrets: str) -> None:
    """No card number in clear, whatever separators were put between its digits; no secret."""
    squashed = re.sub(r"[\s+\-]|%20", "", text)
    for pan in PANS:
        assert pan not in squashed, f"clear PAN {pan} in: {text[:2000]}"
    assert "٤١١١١١١١" not in text
    for secret in secrets:
        assert secret not in text, f"{secret!r} in: {text[:2000]}"


# --- the rules on free text --------------------------------------------------------------


def test_the_test_cards_are_luhn_valid():
    assert all(luhn_ok(p) for p in PANS) and len(PAN12) == 12 and len(PAN19) == 19


@pytest.mark.parametrize(
    "text",
    [
        PAN12,
        f"card {PAN12} declined",
        PAN16,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        f"card={PAN19}",
        "amex 3782 822463 10005",
        f"card_{PAN16}",  # "_" is a word character: \b would not see this one
        f"card{PAN16}",  # glued to letters that are not a hex id
        f"qty 2 {PAN16.replace('1111', '1111 ')}",  # a leading number must not hide it
        f"/pay?card=%20{PAN16}%20&x=1",  # URL-encoded spaces
        f"'{PAN16}'",
        ARABIC,
        f"note: {ARABIC} end",
    ],
)
def test_luhn_valid_digit_runs_are_masked_keeping_the_last_four_at_most(text):
    out = redact_text(text)
    assert_clean(out)
    assert "[REDACTED pan ****" in out
    assert not re.search(r"\d{5,}", re.sub(r"[ -]", "", out.split("[REDACTED")[1]))


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # fails Luhn
        "4bf92f3577b34da6a3ce929d0e0e4736",  # trace id
        "4242424242424242abcdef0123456789",  # a trace id that starts with a Luhn-valid run
        "00f067aa0ba902b7",  # span id
        "trace 4242424242424242abcdef0123456789 failed",  # the same trace id inside text
        "GET /orders/ord_4242424242424242abcd?x=1",
        f"123e4567-e89b-12d3-a456-{PAN12}",  # a UUID whose last group is a Luhn-valid run
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        f"ord_{'4242424242424242'}abcd",  # order id: ord_ + 20 hex
        "pay_0a1b2c3d4e5f6a7b8c9d",
        "2026-12-01T14:43:15.123456Z",
        "1764600195.123456",  # epoch seconds
        EPOCH_MS,  # epoch ms, Luhn-valid, as text
        f"ts={EPOCH_NS}",  # epoch ns
        "GET /api/orders/{order_id} 200 12.5 ms",
        "+1 415 555 2671",  # a phone number: 11 digits
    ],
)
def test_ordinary_ids_and_timestamps_survive(text):
    assert redact_text(text) == text


def test_the_epoch_cases_really_are_luhn_valid():
    # Otherwise the survival test above would prove nothing about the timestamp rule.
    assert luhn_ok(EPOCH_MS) and luhn_ok(EPOCH_NS)
    assert luhn_ok("5555555555554444") and luhn_ok(PAN12)
    assert redact_any(int(EPOCH_NS)) == int(EPOCH_NS)  # as an int too


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"login password={PASSWORD} ok", PASSWORD),
        (f"passwd: {PASSWORD}", PASSWORD),
        (f"PWD={PASSWORD}", PASSWORD),
        (f"client_secret={PASSWORD}&grant=x", PASSWORD),
        (f"?token={PASSWORD}", PASSWORD),
        (f"access_token: '{PASSWORD}'", PASSWORD),
        (f'{{"password": "{PASSWORD}"}}', PASSWORD),
        (f"{{'password': '{PASSWORD}'}}", PASSWORD),
        (f"api_key={PASSWORD}", PASSWORD),
        (f"X-API-Key: {PASSWORD}", PASSWORD),
        (f"q=password%3D{PASSWORD}", PASSWORD),
        ("card cvv=737 ok", "737"),
        ("Cookie: session=s3ss10nvalue; theme=dark", "s3ss10nvalue"),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
        ("authorization=basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
        ("sent Basic dXNlcjpodW50ZXIy upstream", "dXNlcjpodW50ZXIy"),
        ("Authorization: Bearer x1", "x1"),  # short bearer strings too
        ("bearer a9", "a9"),
        ("BEARER abc.def", "abc.def"),
        ("token: Bearer zz", "zz"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln", "eyJzdWIiOiJhbGljZSJ9"),
        (
            "1 validation error for LoginRequest\npassword\n  String should have at most 8 "
            f"characters [type=string_too_long, input_value='{PASSWORD}', input_type=str]",
            PASSWORD,
        ),
    ],
)
def test_free_text_credentials_are_masked(text, secret):
    out = redact_text(text)
    assert secret not in out, out
    assert "[REDACTED]" in out


# --- every value type on a real log line -------------------------------------------------


class LogCapture:
    """The kit's real logging pipeline (structlog + stdlib) writing to the captured stdout."""

    def __init__(self, capfd) -> None:
        self.capfd = capfd

    def start(self) -> None:
        # In the test's own phase: pytest swaps the captured files between setup and call.
        configure_logging("payment")
        self.capfd.readouterr()

    def lines(self) -> list[dict]:
        """The JSON lines written since `start`, after checking the raw text is clean."""
        out = self.capfd.readouterr().out
        assert_clean(out, PASSWORD)
        return [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]


@pytest.fixture
def logs(capfd) -> Iterator[LogCapture]:
    yield LogCapture(capfd)
    logging.getLogger().handlers[:] = []


class Charge(BaseModel):
    card_number: str = Field(pattern=r"^\d{12,19}$")
    password: str = Field(max_length=8)


@dataclasses.dataclass
class CardHolder:
    name: str
    card_number: str
    note: str


class Opaque:
    def __str__(self) -> str:
        return f"Opaque(card {PAN16}, password={PASSWORD})"


def _validation_error() -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Charge(card_number="4111 1111 1111 1111", password=PASSWORD)
    return info.value


def test_every_value_type_is_redacted_on_a_log_line(logs):
    error = _validation_error()
    logs.start()
    get_logger().info(
        "hostile",
        text=f"card {PAN12}",
        raw=f"card {PAN16} password={PASSWORD}".encode(),
        buffer=bytearray(PAN19.encode()),
        cards={PAN12, f"x {AMEX}"},
        frozen=frozenset({PAN16}),
        pair=(PAN16, f"password={PASSWORD}"),
        nested={"a": [{"b": {"c": (f"pan {PAN19}", {"password": PASSWORD})}}]},
        as_int=int(PAN16),
        as_float=float(PAN16),
        error=ValueError(f"declined {PAN16} for password={PASSWORD}"),
        validation=error,
        validation_items=error.errors(),
        holder=CardHolder("alice", PAN16, f"pan {PAN12}"),
        model=Charge.model_construct(card_number=PAN16, password=PASSWORD),
        opaque=Opaque(),
        keyed={int(PAN12): "a", f"k {PAN16}": "b"},
        password=PASSWORD,
        authorization=f"Basic {PASSWORD}",
        order_id="ord_5555555555554444abcd",
        card_last4="1111",
        when=datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC),
        took=datetime.timedelta(seconds=1),
        uid=uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
    )
    (line,) = (r for r in logs.lines() if r["event"] == "hostile")
    assert line["password"] == "[REDACTED]" and line["authorization"] == "[REDACTED]"
    assert line["text"] == "card [REDACTED pan ****4242]"
    assert isinstance(line["cards"], list) and isinstance(line["raw"], str)
    assert line["error"].startswith("ValueError: declined [REDACTED pan ****1111]")
    assert "input_value=[REDACTED]" in line["validation"]
    assert all(item["input"] == "[REDACTED]" for item in line["validation_items"])
    assert line["holder"]["card_number"] == "[REDACTED]" and line["holder"]["name"] == "alice"
    assert line["model"]["card_number"] == "[REDACTED]"
    # What is not a secret is kept as it was.
    assert line["order_id"] == "ord_5555555555554444abcd"
    assert line["card_last4"] == "1111"
    assert line["when"] == "2026-12-01T00:00:00+00:00" and line["took"] == "0:00:01"
    assert line["uid"] == "123e4567-e89b-12d3-a456-426614174000"
    assert re.fullmatch(r"[0-9a-f]{32}|None", str(line["trace_id"]))


def test_cyclic_and_deep_values_do_not_break_the_line(logs):
    logs.start()
    loop: list = [f"card {PAN16}"]
    loop.append(loop)
    deep: dict = {}
    cursor = deep
    for _ in range(200):
        cursor["d"] = {}
        cursor = cursor["d"]
    cursor["pan"] = PAN16
    get_logger().info("deep", loop=loop, deep=deep)
    (line,) = (r for r in logs.lines() if r["event"] == "deep")
    assert "[TRUNCATED]" in json.dumps(line)


def test_a_logged_exception_and_its_traceback_carry_no_card_or_input_value(logs):
    logs.start()

    def charge() -> None:
        try:
            Charge(card_number=f"{PAN16[:4]} {PAN16[4:]}", password=PASSWORD)
        except ValidationError as exc:
            raise RuntimeError(f"charge failed for card {PAN12}, password={PASSWORD}") from exc

    log = get_logger()
    try:
        charge()
    except RuntimeError as exc:
        log.error("charge_failed", error=repr(exc), exc_info=exc)
        log.exception("charge_failed_again")
    lines = [r for r in logs.lines() if r["event"].startswith("charge_failed")]
    assert len(lines) == 2
    for line in lines:
        trace = line["exception"]
        assert "Traceback" in trace and "ValidationError" in trace and "RuntimeError" in trace
        assert "input_value=[REDACTED]" in trace
        assert "[REDACTED pan ****4242]" in trace


def test_stdlib_records_go_through_the_same_rules(logs):
    """uvicorn and libraries log through the stdlib: message, args, extra and exc_info."""
    logs.start()
    try:
        raise ValueError(f"bad card {PAN16}")
    except ValueError:
        logging.getLogger("uvicorn.error").exception(
            "request failed for %s", f"password={PASSWORD}", extra={"card": PAN19}
        )
    (line,) = (r for r in logs.lines() if r["event"].startswith("request failed"))
    assert line["event"] == "request failed for password=[REDACTED]"
    assert line["card"] == "[REDACTED]"
    assert "bad card [REDACTED pan ****1111]" in line["exception"]


# --- spans: the JSON span file and OTLP --------------------------------------------------


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver on 127.0.0.1: what the exporter sent, as bytes."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def raw(self) -> str:
        return b"".join(self.bodies).decode("latin-1")

    def spans(self) -> list:
        spans = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    spans.extend(ss.spans)
        return spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def _settings(tmp_path: Path, **values) -> Settings:
    return Settings(data_dir=tmp_path, **values).for_service("payment")


def _trace_id_of(provider: TracerProvider) -> str:
    holder = {}
    tracer = provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("POST /payments/charge") as span:
            holder["id"] = format(span.get_span_context().trace_id, "032x")
            span.set_attribute("http.url", f"http://x/charge?card={PAN16}&password={PASSWORD}")
            span.set_attribute("http.request.header.authorization", ("Basic dXNlcjpodW50ZXIy",))
            span.set_attribute("card_number", PAN12)
            span.set_attribute("note", f"card {PAN19}")
            span.set_attribute("amount", int(AMEX))
            span.set_attribute("cards", [PAN16, "ok"])
            span.set_attribute("order_id", "ord_5555555555554444abcd")
            span.add_event("retry", {"detail": f"Bearer z1 for {PAN12}"})
            span.record_exception(RuntimeError(f"processor said card {PAN16} is bad"))
            Charge(card_number="4111 1111 1111 1111", password=PASSWORD)
    except ValidationError:
        pass
    return holder["id"]


def test_span_file_and_otlp_get_redacted_attributes_events_and_status(tmp_path, otlp):
    span_file = tmp_path / "spans.jsonl"
    provider = build_tracer_provider(
        _settings(tmp_path, span_file=str(span_file), otel_exporter_otlp_endpoint=otlp.url)
    )
    trace_id = _trace_id_of(provider)
    provider.shutdown()  # flushes both batch processors

    # The JSON span file: attributes and (now written) events, redacted.
    text = span_file.read_text()
    assert_clean(text, PASSWORD, "dXNlcjpodW50ZXIy", "z1 ")
    (span,) = [json.loads(ln) for ln in text.splitlines()]
    assert span["trace_id"] == trace_id  # ids survive
    attrs = span["attributes"]
    assert attrs["card_number"] == "[REDACTED]"
    assert attrs["http.request.header.authorization"] == "[REDACTED]"
    assert attrs["order_id"] == "ord_5555555555554444abcd"
    assert attrs["cards"] == ["[REDACTED pan ****1111]", "ok"]
    names = [e["name"] for e in span["events"]]
    assert names.count("exception") == 2 and "retry" in names
    messages = [
        e["attributes"]["exception.message"] for e in span["events"] if e["name"] != "retry"
    ]
    assert any("input_value=[REDACTED]" in m for m in messages)
    assert any("[REDACTED pan ****1111]" in m for m in messages)

    # OTLP: what the receiver got (raw bytes, then decoded), including the status description.
    assert otlp.bodies, "the OTLP exporter sent nothing"
    assert_clean(otlp.raw(), PASSWORD, "dXNlcjpodW50ZXIy")
    (sent,) = otlp.spans()
    assert sent.trace_id.hex() == trace_id
    events = {e.name: e for e in sent.events}
    assert {"exception", "retry"} <= set(events)
    stack = [a.value.string_value for a in events["exception"].attributes]
    assert any("Traceback" in s or "RuntimeError" in s for s in stack)
    assert "input_value=[REDACTED]" in sent.status.message
    sent_attrs = {a.key: a.value for a in sent.attributes}
    assert sent_attrs["order_id"].string_value == "ord_5555555555554444abcd"
    assert sent_attrs["amount"].string_value == "[REDACTED pan ****0005]"


def test_every_exporter_the_provider_wires_is_behind_redaction(tmp_path, otlp):
    provider = build_tracer_provider(
        _settings(
            tmp_path, span_file=str(tmp_path / "s.jsonl"), otel_exporter_otlp_endpoint=otlp.url
        )
    )
    processors = provider._active_span_processor._span_processors
    assert len(processors) == 2
    for processor in processors:
        assert isinstance(processor.span_exporter, RedactingSpanExporter), processor
    provider.shutdown()


def test_redacted_copy_keeps_links_dropped_counts_and_clean_spans_are_not_copied():
    memory = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=2))
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(memory)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("clean") as clean:
        clean.set_attribute("http.route", "/api/orders/{order_id}")
    other = clean.get_span_context()
    with tracer.start_as_current_span("dirty", links=[Link(other, {"why": f"pan {PAN16}"})]) as s:
        s.set_attribute("b", 1)  # over the limit below: dropped (the oldest goes)
        s.set_attribute("c", 2)
        s.set_attribute("a", f"card {PAN16}")
    clean_out, dirty_out = memory.get_finished_spans()
    assert redact_span(clean_out) is clean_out
    assert dirty_out.attributes["a"] == "card [REDACTED pan ****1111]"
    assert dirty_out.links[0].attributes["why"] == "pan [REDACTED pan ****1111]"
    assert dirty_out.dropped_attributes == 1


def test_redact_any_returns_json_ready_values():
    out = redact_any({"s": {b"x"}, 1: (2.5, None, True), "e": KeyError("k")})
    assert json.loads(json.dumps(out)) == {"s": ["x"], "1": [2.5, None, True], "e": "KeyError: 'k'"}


def test_an_unhandled_exception_in_a_kit_app_is_redacted_in_log_span_file_and_otlp(
    tmp_path, otlp, logs
):
    """A kit app (the FastAPI instrumentation, the kit's 500 handler, both exporters) whose
    route fails on a card number: the exception event OTLP sends and the traceback logged."""
    from fastapi import APIRouter

    from services.kit import Kit

    router = APIRouter()

    @router.post("/boom")
    async def boom(body: dict) -> dict:
        try:
            Charge(**body)
        except ValidationError as exc:
            raise RuntimeError(f"charge for card {body['card_number']} failed") from exc
        return {}

    logs.start()
    local = {"lab_mode": "local"} if "lab_mode" in Settings.model_fields else {}
    settings = Settings(
        data_dir=tmp_path,
        span_file=str(tmp_path / "spans.jsonl"),
        otel_exporter_otlp_endpoint=otlp.url,
        **local,
    )
    kit = Kit("payment", settings)
    app = kit.build_app(title="boom", routers=[router])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.post("/boom", json={"card_number": PAN12, "password": PASSWORD})

    response = asyncio.run(call())
    kit.tracer_provider.shutdown()
    assert response.status_code == 500
    (line,) = (r for r in logs.lines() if r["event"] == "unhandled_exception")
    assert "RuntimeError: charge for card [REDACTED pan ****4242] failed" in line["exception"]
    assert "input_value=[REDACTED]" in line["exception"]
    spans = (tmp_path / "spans.jsonl").read_text()
    assert_clean(spans, PASSWORD)
    assert_clean(otlp.raw(), PASSWORD)
    sent = [e for span in otlp.spans() for e in span.events if e.name == "exception"]
    assert sent, "no exception event was exported over OTLP"
    messages = [a.value.string_value for e in sent for a in e.attributes]
    assert any("[REDACTED pan ****4242]" in m for m in messages)
    assert any("input_value=[REDACTED]" in m for m in messages)
    assert '"name":"exception"' in spans  # the span file now carries the same events


# --- a real service process --------------------------------------------------------------


@pytest.mark.integration
def test_a_real_service_writes_no_clear_card_or_password_to_its_logs_and_spans(tmp_path, otlp):
    """auth as a real uvicorn process, with its span file and an OTLP exporter to a receiver
    here: a login whose body, query string and correlation id carry a 12-digit card number and
    `password=` free text."""
    with running_services(
        tmp_path, names=("auth",), LAB_MODE="local", OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url
    ) as lab:
        response = httpx.post(
            lab.url("auth") + f"/auth/login?note=password%3D{PASSWORD}&card={PAN12}",
            json={"username": f"u {PAN12} password={PASSWORD}", "password": PASSWORD},
            headers={"X-Correlation-ID": PAN12, "Authorization": f"Basic {PASSWORD}"},
            timeout=30,
        )
        assert response.status_code in (401, 422, 429), response.text
        span_file = lab.span_file("auth")
        wait_until(
            lambda: span_file.exists() and "/auth/login" in span_file.read_text(),
            timeout=30,
            what="the login span in the span file",
        )
        wait_until(lambda: "/auth/login" in otlp.raw(), timeout=30, what="the span over OTLP")
        wait_until(
            lambda: "/auth/login" in lab.log_file("auth").read_text(), what="the access line"
        )
    log_text = lab.log_file("auth").read_text()
    spans_text = span_file.read_text()
    # The hostile values did reach the sinks (so the checks below can fail)...
    assert "[REDACTED pan ****" in log_text, log_text[-3000:]
    assert "****4242]" in spans_text and "****4242]" in otlp.raw()
    # ... and nothing of them is in clear.
    for text in (log_text, spans_text, otlp.raw()):
        assert_clean(text, PASSWORD)
    for line in log_text.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every line is still one JSON object
