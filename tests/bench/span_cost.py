"""What one server span costs in the OpenTelemetry SDK, apart from any instrumentation.

Creates N spans shaped like the FastAPI instrumentation's server span (13 attributes) and
reports process CPU microseconds per span for: the SDK alone (start + end, no exporter); the
kit's JSON-lines exporter on 512-span batches; the whole path (span + BatchSpanProcessor + that
exporter, flushed); and OTLP/protobuf encoding of the same spans (what the compose lab sends
to Jaeger). The difference between these and `asgi_cost`'s per-request figures is the
instrumentation's own work.

    uv run --frozen python -m tests.bench.span_cost [--spans 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.kit.tracing import JsonLinesSpanExporter

ATTRIBUTES = {
    "http.scheme": "http",
    "http.host": "127.0.0.1:8000",
    "net.host.port": 8000,
    "http.flavor": "1.1",
    "http.target": "/ping",
    "http.url": "http://127.0.0.1:8000/ping",
    "http.method": "GET",
    "http.server_name": "127.0.0.1:8000",
    "http.user_agent": "wrk",
    "net.peer.ip": "127.0.0.1",
    "net.peer.port": 40000,
    "http.route": "/ping",
    "http.status_code": 200,
}
BATCH = 512  # BatchSpanProcessor's default max_export_batch_size


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def _provider(processor: SpanProcessor | None) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway"}))
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


def _make_spans(provider: TracerProvider, n: int) -> float:
    """CPU µs per span to start and end `n` server-shaped spans."""
    tracer = provider.get_tracer("bench")
    c0 = time.process_time()
    for _ in range(n):
        with tracer.start_as_current_span("GET /ping", attributes=ATTRIBUTES):
            pass
    return (time.process_time() - c0) / n * 1e6


def _per_span(work, spans: list[ReadableSpan]) -> float:
    c0 = time.process_time()
    for i in range(0, len(spans), BATCH):
        work(spans[i : i + BATCH])
    return (time.process_time() - c0) / len(spans) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spans", type=int, default=20000)
    args = p.parse_args(argv)
    if not 1000 <= args.spans <= 1_000_000:
        p.error("--spans must be 1,000..1,000,000")
    tmp = Path(tempfile.mkdtemp(prefix="bench-spans-"))

    keep = _Keep()
    sdk = _make_spans(_provider(keep), args.spans)
    exporter = JsonLinesSpanExporter(tmp / "export.jsonl")
    jsonl = _per_span(exporter.export, keep.spans)
    exporter.shutdown()
    otlp = _per_span(lambda batch: encode_spans(batch).SerializeToString(), keep.spans)

    batch = BatchSpanProcessor(JsonLinesSpanExporter(tmp / "batch.jsonl"))
    c0 = time.process_time()
    _make_spans(_provider(batch), args.spans)
    batch.force_flush()
    whole = (time.process_time() - c0) / args.spans * 1e6
    batch.shutdown()

    print(f"{args.spans} server-shaped spans, {len(ATTRIBUTES)} attributes each; CPU µs per span")
    print(f"  SDK: start + end, no exporter             {sdk:6.1f}")
    print(f"  JSON-lines export ({BATCH}-span batches)      {jsonl:6.1f}")
    print(f"  SDK + BatchSpanProcessor + JSON-lines     {whole:6.1f}")
    print(f"  OTLP protobuf encoding ({BATCH}-span batches) {otlp:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
