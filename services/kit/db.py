"""SQLAlchemy 2 async: SQLite file by default, PostgreSQL by URL; pool metrics and SQL spans."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from opentelemetry.instrumentation.sqlalchemy import __version__ as sqla_instr_version
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine

from .errors import ServiceError
from .settings import Settings

POOL_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Database:
    def __init__(
        self, settings: Settings, registry: CollectorRegistry, tracer_provider: TracerProvider
    ) -> None:
        url = make_url(settings.db_url())
        kwargs: dict = {
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_seconds,
        }
        self.is_sqlite = url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 10}
        self.engine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # One EngineTracer per engine (the instrumentor's global switch would trace only the
        # first engine of a process; tests run several services in one).
        EngineTracer(
            tracer_provider.get_tracer(
                "opentelemetry.instrumentation.sqlalchemy", sqla_instr_version
            ),
            self.engine.sync_engine,
            NoOpMeter("triagelab").create_up_down_counter("db.client.connections.usage"),
        )
        pool = self.engine.pool
        Gauge("db_pool_size", "Connections the pool keeps.", registry=registry).set_function(
            pool.size  # type: ignore[attr-defined]
        )
        Gauge("db_pool_checked_out", "Connections in use.", registry=registry).set_function(
            pool.checkedout  # type: ignore[attr-defined]
        )
        Gauge(
            "db_pool_overflow", "Connections beyond the pool size.", registry=registry
        ).set_function(
            lambda: max(pool.overflow(), 0)  # type: ignore[attr-defined]
        )
        self._wait = Histogram(
            "db_pool_wait_seconds",
            "Time waiting for a pooled connection.",
            buckets=POOL_WAIT_BUCKETS,
            registry=registry,
        )
        self._timeouts = Counter(
            "db_pool_timeouts", "Requests that found no free connection in time.", registry=registry
        )

    async def create_all(self, metadata: MetaData) -> None:
        """Create missing tables; refuse to start on a table of an older layout (no migrations:
        the lab's data is disposable) with a message that says what to do."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            stale = await conn.run_sync(_missing_columns, metadata)
        if stale:
            raise RuntimeError(
                f"the database {self.engine.url.render_as_string(hide_password=True)} was made by "
                f"an older version (missing: {', '.join(stale)}): delete it (`make clean` for "
                "the lab) and start again"
            )

    async def connect(self) -> AsyncConnection:
        """A pooled connection; a 503 (not a hang, not a 500) when the pool is exhausted."""
        start = time.perf_counter()
        try:
            conn = await self.engine.connect()
        except sa_exc.TimeoutError as exc:
            self._timeouts.inc()
            raise ServiceError(
                503, "db_pool_exhausted", "no database connection available"
            ) from exc
        self._wait.observe(time.perf_counter() - start)
        return conn

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        conn = await self.connect()
        try:
            async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                yield session
        finally:
            await conn.close()

    async def ping(self) -> None:
        conn = await self.connect()
        try:
            await conn.execute(text("SELECT 1"))
        finally:
            await conn.close()

    async def dispose(self) -> None:
        await self.engine.dispose()


def _missing_columns(sync_conn, metadata: MetaData) -> list[str]:
    inspector = inspect(sync_conn)
    missing = []
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers run beside the writer; busy_timeout waits for a lock instead of failing.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
