"""OpenTelemetry tracing: one TracerProvider per app, OTLP and/or a JSON-lines span file."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .settings import Settings

SERVICE_TAG = "triagelab.service"

# W3C tracecontext + baggage on every hop, in and out.
propagate.set_global_textmap(
    CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
)


# Enum member -> name, without the enum machinery's per-access cost (`.name`).
_NAMES = {m: m.name for enum in (SpanKind, StatusCode) for m in enum}
_NEWLINE = orjson.OPT_APPEND_NEWLINE


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
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if settings.span_file:
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(settings.span_file)))
    return provider
