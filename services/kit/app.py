"""The app factory every service uses: telemetry, health, errors and clients wired once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from starlette.responses import Response

from .db import Database
from .errors import error_response, install_error_handlers
from .faults import FaultManager, admin_router, default_audit_path
from .http import ServiceClient
from .logs import configure_logging, get_logger
from .metrics import Metrics
from .middleware import FAILURE, DeadlineGate, FaultMiddleware, TelemetryMiddleware
from .settings import Settings
from .tracing import build_tracer_provider

ReadinessCheck = Callable[[], Awaitable[Any]]
# A worker that raises is restarted after this backoff (doubling, jittered, capped).
WORKER_BACKOFF_SECONDS = (0.1, 30.0)
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
Worker = Callable[[Callable[[], None]], Awaitable[None]]


async def request_checks(request: Request) -> None:
    """Every route's first dependency. A request marked to fail (middleware.FAILURE) raises here,
    inside the route, and takes the path any bug takes: the kit's 500 handler and its
    error-level line with the traceback, the span's exception event and error status."""
    if (failure := request.scope.get(FAILURE)) is not None:
        raise failure


"""A background loop; it gets its heartbeat, to call after each round that completed."""


class Kit:
    """Everything one service instance owns: settings, telemetry, clients, readiness checks.

    Built by the service's `create_app`, never at import time, so tests can build many apps.
    Handlers do not take the kit: they take the narrow dependencies of `services.kit.deps`
    (and their service's own, e.g. order's `LedgerDep`).
    """

    def __init__(self, name: str, settings: Settings | None = None) -> None:
        self.settings = (settings or Settings()).for_service(name)
        # No service runs on a missing, short or shipped secret (docs/security.md).
        self.settings.require_safe_secrets()
        self.name = name
        configure_logging(name, self.settings.log_level)
        self.log = get_logger(service=name)
        self.metrics = Metrics(
            name,
            self.settings.service_version,
            self.settings.deployment_environment,
            memory_limit_mb=self.settings.memory_limit_mb,
        )
        self.tracer_provider = build_tracer_provider(self.settings)
        self.tracer = self.tracer_provider.get_tracer(f"triagelab.{name}")
        self.clients: dict[str, ServiceClient] = {}
        self.readiness: dict[str, ReadinessCheck] = {}
        self.workers: dict[str, Worker] = {}
        self.database: Database | None = None
        # Tests wire services together in-process by handing each peer an ASGI transport.
        self.transports: dict[str, Any] = {}
        s = self.settings
        audit = Path(s.fault_audit_file) if s.fault_audit_file else default_audit_path(s.data_dir)
        self.faults = FaultManager(
            name,
            audit_path=audit,
            pool_capacity=s.db_pool_size + s.db_max_overflow,
            set_version=self.metrics.set_version,
        )

    def client(self, peer: str) -> ServiceClient:
        """The (single, pooled) client for a peer, with that hop's own timeout."""
        if peer not in self.clients:
            s = self.settings
            self.clients[peer] = ServiceClient(
                peer,
                getattr(s, f"{peer}_url"),
                timeout=getattr(s, f"{peer}_timeout_seconds"),
                metrics=self.metrics,
                tracer_provider=self.tracer_provider,
                retries=s.http_retries,
                backoff=s.http_retry_backoff_seconds,
                transport=self.transports.get(peer),
                internal_token=s.internal_token,
            )
        return self.clients[peer]

    def add_worker(self, name: str, run: Worker) -> None:
        """A background loop that runs for the app's lifetime (started after the service's own
        startup, cancelled before its shutdown), supervised: see `supervise`. `run` gets its
        heartbeat: it calls it after each round that completed (worker_iterations_total and
        worker_last_success_timestamp_seconds)."""
        self.workers[name] = run

    async def supervise(self, name: str, run: Worker) -> None:
        """Run a worker forever: if it raises (or returns), log it, count it in
        ``worker_restarts_total{worker}`` and start it again after a jittered, doubling backoff.
        No worker can die silently."""
        low, high = WORKER_BACKOFF_SECONDS
        delay = low
        restarts = self.metrics.worker_restarts.labels(name)
        beat = self.metrics.heartbeat(name)
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await run(beat)
                self.log.error("worker_exited", worker=name)
            except Exception as exc:
                self.log.error("worker_crashed", worker=name, error=repr(exc), exc_info=exc)
            if asyncio.get_running_loop().time() - started > high:
                delay = low  # it ran well for a while: a fresh failure starts the backoff over
            restarts.inc()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, high)

    def open_database(self) -> Database:
        self.database = Database(self.settings, self.metrics.registry, self.tracer_provider)
        self.readiness["database"] = self.database.ping
        self.faults.database = self.database  # db_pool_exhaustion applies from now on
        return self.database

    def require_peer(self, peer: str) -> None:
        """Readiness includes this peer's liveness."""

        async def check() -> None:
            response = await self.client(peer).request("GET", "/healthz", timeout=1.0)
            response.raise_for_status()

        self.readiness[peer] = check

    def build_app(
        self,
        *,
        title: str,
        routers: list[APIRouter],
        lifespan: Lifespan | None = None,
    ) -> FastAPI:
        kit = self

        @asynccontextmanager
        async def running_workers() -> AsyncIterator[None]:
            tasks = [
                asyncio.create_task(kit.supervise(name, run), name=name)
                for name, run in kit.workers.items()
            ]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                if tasks:
                    _, stuck = await asyncio.wait(tasks, timeout=5)
                    for task in stuck:
                        kit.log.warning("worker_did_not_stop", worker=task.get_name())

        @asynccontextmanager
        async def full_lifespan(app: FastAPI) -> AsyncIterator[None]:
            # A release in progress starts as its version (faults.FaultManager.resume_release).
            version = kit.faults.resume_release() or kit.settings.service_version
            kit.log.info("service_starting", version=version)
            kit.faults.exit_if_held()  # a crash that is not over yet: a crash loop
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if lifespan is not None:
                        await stack.enter_async_context(lifespan(app))
                    await stack.enter_async_context(running_workers())
                    kit.log.info("service_started")
                    # Everything built so far (modules, routes, providers) lives as long as the
                    # process: keep it out of the collector's full passes. Measured: p99 of the
                    # overhead benchmark 59 -> 18 ms, CPU per request -7% (docs/benchmarks.md).
                    gc.freeze()
                    yield
            finally:
                for client in kit.clients.values():
                    await client.aclose()
                await kit.faults.shutdown()
                if kit.database is not None:
                    await kit.database.dispose()
                kit.tracer_provider.shutdown()
                kit.log.info("service_stopped")

        # Swagger UI and ReDoc from the package's own copies of their assets: /docs works
        # offline (FastAPI's default pages load them from a CDN).
        app = FastAPIOffline(
            title=title,
            version=self.settings.service_version,
            lifespan=full_lifespan,
            dependencies=[Depends(request_checks)],
        )
        app.state.kit = self
        install_error_handlers(app)
        # The service's routes first: routing tries routes in order, and they carry the traffic.
        for router in routers:
            app.include_router(router)
        app.include_router(_ops_router(self))
        app.include_router(admin_router(self.faults, self.settings.admin_token))
        # The service's own routes (FastAPI wraps included routers, so ask the routers).
        api_routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
        self.metrics.initialise_routes(
            [(m, r.path, r.status_code or 200) for r in api_routes for m in r.methods]
        )
        # Innermost first: faults act inside telemetry, so they show as symptoms only; the
        # deadline gate is inside the faults, so a request held past its deadline does no work.
        app.add_middleware(DeadlineGate, routes=api_routes)
        app.add_middleware(FaultMiddleware, manager=self.faults, routes=api_routes)
        app.add_middleware(
            TelemetryMiddleware,
            metrics=self.metrics,
            max_body_bytes=self.settings.max_body_bytes,
            budget_seconds=self.settings.request_budget_seconds,
        )
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.tracer_provider,
            meter_provider=NoOpMeterProvider(),
            excluded_urls="/healthz,/readyz,/metrics,/admin",
            exclude_spans=["receive", "send"],
        )
        return app


def _ops_router(kit: Kit) -> APIRouter:
    """Health, readiness and metrics of one app (built per app, like the kit it reads)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict:
        """Alive: the process answers. Orchestrators restart on failure."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: every dependency this service needs answers, checked concurrently."""
        names = list(kit.readiness)
        results = await asyncio.gather(
            *(asyncio.wait_for(kit.readiness[n](), 2.0) for n in names), return_exceptions=True
        )
        checks = {
            n: "ok" if not isinstance(r, BaseException) else f"failed: {type(r).__name__}"
            for n, r in zip(names, results, strict=True)
        }
        ok = all(v == "ok" for v in checks.values())
        if ok:
            return JSONResponse({"status": "ok", "checks": checks})
        failed = ", ".join(n for n, v in checks.items() if v != "ok")
        return error_response(503, "not_ready", f"dependencies not ready: {failed}", checks)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return kit.metrics.render(request)

    return router
