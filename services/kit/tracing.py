"""OpenTelemetry tracing: one TracerProvider per app, OTLP and/or a JSON-lines span file."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson
from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .redact import REDACTED, redact_any, redact_int, redact_key, redact_text
from .settings import Settings

SERVICE_TAG = "triagelab.service"

# W3C tracecontext + baggage on every hop, in and out.
propagate.set_global_textmap(
    CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
)


# Enum member -> name, without the enum machinery's per-access cost (`.name`).
_NAMES = {m: m.name for enum in (SpanKind, StatusCode) for m in enum}
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def _redact_attr(value: object) -> object:
    """An attribute value (str, bool, int, float, bytes, or a sequence or mapping of them)
    with the redaction rules applied; the same object when nothing had to change."""
    t = type(value)
    if t is str:
        return redact_text(value)  # type: ignore[arg-type]
    if t is bool:
        return value
    if t is float:
        return redact_any(value)  # an integral float can be a card number too
    if t is int:
        return redact_int(value)  # type: ignore[arg-type]
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, Mapping):
        return _redact_attrs(value)
    if isinstance(value, list | tuple):
        items = tuple(_redact_attr(v) for v in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _redact_attrs(attributes):
    """Attributes with the rules applied (secret keys' values dropped, free text masked); the
    same mapping when nothing changed, so a clean span costs a scan and no copy."""
    if not attributes:
        return attributes
    out = None
    for key, value in attributes.items():
        clean_key, secret = redact_key(key)
        clean = REDACTED if secret else _redact_attr(value)
        if out is None:
            if (clean is value or clean == value) and clean_key == key:
                continue
            out = {}
            for k, v in attributes.items():  # the clean ones before this one, as they were
                if k == key:
                    break
                out[k] = v
        out[clean_key] = clean
    return attributes if out is None else out


class _RedactedSpan(ReadableSpan):
    """A finished span's redacted copy; keeps the original's dropped counts (OTLP sends them)."""

    def __init__(self, original: ReadableSpan, **changes) -> None:
        fields = {
            "name": original.name,
            "context": original.get_span_context(),
            "parent": original.parent,
            "resource": original.resource,
            "attributes": original.attributes,
            "events": original.events,
            "links": original.links,
            "kind": original.kind,
            "status": original.status,
            "start_time": original.start_time,
            "end_time": original.end_time,
            "instrumentation_scope": original.instrumentation_scope,
        }
        fields.update(changes)
        super().__init__(**fields)
        self._dropped = (
            original.dropped_attributes,
            original.dropped_events,
            original.dropped_links,
        )

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """The span with every rule of services/kit/redact.py applied to its name, attributes,
    events (exception messages and stack traces included), links and status description; the
    same object when nothing had to change."""
    changes: dict = {}
    name = redact_text(span.name)
    if name != span.name:
        changes["name"] = name
    attributes = span.attributes
    clean = _redact_attrs(attributes)
    if clean is not attributes:
        changes["attributes"] = clean
    events = span.events
    if events:
        new_events = []
        for e in events:
            e_name, e_attrs = redact_text(e.name), _redact_attrs(e.attributes)
            if e_name == e.name and e_attrs is e.attributes:
                new_events.append(e)
            else:
                new_events.append(Event(e_name, e_attrs, e.timestamp))
        if any(a is not b for a, b in zip(new_events, events, strict=True)):
            changes["events"] = tuple(new_events)
    links = span.links
    if links:
        new_links = []
        for link in links:
            attrs = _redact_attrs(link.attributes)
            new_links.append(link if attrs is link.attributes else Link(link.context, attrs))
        if any(a is not b for a, b in zip(new_links, links, strict=True)):
            changes["links"] = tuple(new_links)
    status = span.status
    if status.description:
        description = redact_text(status.description)
        if description != status.description:
            changes["status"] = Status(status.status_code, description)
    return _RedactedSpan(span, **changes) if changes else span


class RedactingSpanExporter(SpanExporter):
    """Wraps an exporter: every span is redacted (`redact_span`) before the wrapped exporter
    sees it. `build_tracer_provider` puts every exporter it wires (OTLP, the span file) behind
    one, so no export path can skip the rules. Runs in the batch thread, not in the request."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([redact_span(s) for s in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def exporting_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    """The one way the kit attaches an exporter to a provider: batched, behind redaction."""
    return BatchSpanProcessor(RedactingSpanExporter(exporter))


class JsonLinesSpanExporter(SpanExporter):
    """Finished spans as JSON lines: a lab without Jaeger, and the tests, can read traces."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._path.open("ab")
        self._lock = threading.Lock()

    @staticmethod
    def to_dict(span: ReadableSpan) -> dict:
        ctx = span.get_span_context()
        parent = span.parent
        return {
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_span_id": f"{parent.span_id:016x}" if parent else None,
            "name": span.name,
            "service": span.resource.attributes.get("service.name"),
            "kind": _NAMES[span.kind],
            "start_ns": span.start_time,
            "end_ns": span.end_time,
            "status": _NAMES[span.status.status_code],
            "attributes": dict(span.attributes or {}),
            # Exception events too (what OTLP sends): the stack trace of a failed request.
            "events": [
                {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
                for e in span.events
            ],
        }

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # This runs in the batch thread, which shares the GIL (and the core) with the server.
        dumps, to_dict = orjson.dumps, self.to_dict
        data = b"".join([dumps(to_dict(s), default=str, option=_NEWLINE) for s in spans])
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(data)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def build_tracer_provider(settings: Settings) -> TracerProvider:
    """A provider for this app only (not the global one: tests build several apps per process)."""
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            # Jaeger returns service.name as process.serviceName, never as a tag, and Grafana
            # builds trace -> logs/metrics links from tags only: this copy is the tag they map
            # to the `service` label (grafana/provisioning/datasources/datasources.yaml).
            SERVICE_TAG: settings.service_name,
            "service.version": settings.service_version,
            "deployment.environment": settings.deployment_environment,
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
    )
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(exporting_processor(OTLPSpanExporter(endpoint=endpoint)))
    if settings.span_file:
        provider.add_span_processor(exporting_processor(JsonLinesSpanExporter(settings.span_file)))
    return provider
