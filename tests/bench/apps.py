"""The apps the overhead benchmark serves, as uvicorn factories (`uvicorn --factory`).

- `bare_app`: plain FastAPI, one trivial endpoint, no instrumentation at all.
- `kit_app`: the same endpoint in an app built by the kit (`Kit.build_app`), so it carries the
  full instrumentation every service has: FastAPI instrumentation with 100% sampled traces
  exported through a BatchSpanProcessor (to SPAN_FILE), RED metrics with exemplars, one JSON
  access-log line per request on stdout.
- `kit_notrace_app`: the kit app with the FastAPI instrumentation switched off, to attribute
  the cost (the kit's own middleware, metrics and logs vs tracing).
- `otel_defaults_app`: the peer a user would write instead of the kit: plain FastAPI with
  `FastAPIInstrumentor.instrument_app(app)` and nothing else (its defaults: receive/send spans
  too), the SDK's TracerProvider (100% sampled) and BatchSpanProcessor, and the SDK's own
  ConsoleSpanExporter writing one JSON span per line to SPAN_FILE; no metrics, no logs.
- `kit_native_app`: an experiment for a steering decision, not what the services run: the kit
  app with FastAPI's own OpenTelemetry server spans (FastAPI >= 0.165, `FastAPI(telemetry=...)`,
  same tracer provider and exporter) in place of opentelemetry-instrumentation-fastapi.
"""

from __future__ import annotations

import os
import secrets
from unittest import mock

from fastapi import APIRouter, FastAPI

import services.kit.app as kit_module
from services.kit import Settings
from services.kit.app import FastAPIInstrumentor, Kit
from services.kit.settings import SECRET_SETTINGS

SERVICE = "gateway"  # the kit only builds apps for the five known service names


def bench_settings() -> Settings:
    """Settings from the environment (SPAN_FILE, TRACE_SAMPLE_RATIO...), with random secrets
    where it sets none: the kit refuses the shipped ones (docs/security.md)."""
    return Settings(
        **{n: secrets.token_urlsafe(32) for n in SECRET_SETTINGS if not os.environ.get(n.upper())}
    )


async def ping() -> dict:
    return {"ok": True}


def bare_app() -> FastAPI:
    app = FastAPI(title="bench-bare")
    app.add_api_route("/ping", ping, methods=["GET"])
    return app


def _router() -> APIRouter:
    router = APIRouter()
    router.add_api_route("/ping", ping, methods=["GET"])
    return router


def kit_app() -> FastAPI:
    settings = bench_settings()  # SPAN_FILE, TRACE_SAMPLE_RATIO... from the environment
    return Kit(SERVICE, settings).build_app(title="bench-kit", routers=[_router()])


def kit_notrace_app() -> FastAPI:
    settings = bench_settings()
    with mock.patch.object(FastAPIInstrumentor, "instrument_app", lambda *a, **k: None):
        return Kit(SERVICE, settings).build_app(title="bench-kit-notrace", routers=[_router()])


def otel_defaults_app() -> FastAPI:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    out = open(os.environ["SPAN_FILE"], "a", buffering=1 << 16)  # open for the process' life
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-otel-defaults"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    app = bare_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app


def kit_native_app() -> FastAPI:
    kit = Kit(SERVICE, bench_settings())
    telemetry = {
        "tracer_provider": kit.tracer_provider,
        "metrics": False,  # the kit's RED middleware counts requests
        "logs": False,  # the kit's structlog lines log them
        "operation_spans": False,  # one server span per request, as the instrumentation makes
        "exclude": lambda scope: scope["path"] in ("/healthz", "/readyz", "/metrics"),
    }

    def native_fastapi(*args, **kwargs) -> FastAPI:
        return FastAPI(*args, telemetry=telemetry, **kwargs)

    with (
        mock.patch.object(kit_module, "FastAPI", native_fastapi),
        mock.patch.object(FastAPIInstrumentor, "instrument_app", lambda *a, **k: None),
    ):
        return kit.build_app(title="bench-kit-native", routers=[_router()])
