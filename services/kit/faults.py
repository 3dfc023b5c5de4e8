"""Fault injection, shared by all five services: a token-protected admin API and the faults'
side effects (the per-request faults act through middleware.FaultMiddleware).

Faults are data (a kind, parameters, a time-to-live) and expire on their own, so a forgotten
fault cannot wedge the lab. They show up only as symptoms: there is no fault metric, no fault
span attribute, and the error bodies look like real failures. The admin API writes an audit
trail to its own file (FAULT_AUDIT_FILE), not to the service's log stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from services.fault_spec import (
    DEFAULT_ADMIN_TOKEN,
    FAULT_KINDS,
    MAX_ACTIVE_FAULTS,
    MAX_CPU_BURN_THREADS,
    MAX_FAULT_MEMORY_MB,
    MAX_GC_PAUSE_FAULTS,
    REQUEST_KINDS,
    BadReleaseFault,
    FaultIn,
    route_matcher,
)

from .db import Database
from .errors import ServiceError

Starter = Callable[["ActiveFault"], Awaitable[Callable[[], Awaitable[None]] | None]]


def default_audit_path(data_dir: Path) -> Path:
    """Where the admin API records faults unless FAULT_AUDIT_FILE says otherwise."""
    return data_dir / "faults-audit.jsonl"


def crash_hold_path(audit_path: Path, service: str) -> Path:
    """A crash fault's hold, beside the audit file: until it ends, the service exits at startup.

    On a platform that restarts a crashed process (compose's restart policy, Kubernetes), a
    crash is then a crash loop for the fault's time to live, as a bad build or a corrupt
    config gives; without the hold the platform would undo the fault in a second. The native
    lab restarts nothing by itself; its drill runner removes the hold before it restarts."""
    return audit_path.with_name(f"{service}-crash-hold.json")


def release_path(audit_path: Path, service: str) -> Path:
    """A bad release in progress, beside the audit file: the version a restart starts as, and
    the route it breaks, until the fault ends (FaultManager.resume_release)."""
    return audit_path.with_name(f"{service}-release.json")


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(value))
    tmp.replace(path)


def _restart_soon() -> None:
    """Stop this process gracefully (SIGTERM: uvicorn's shutdown, the lifespan's end, exit 0)
    once the admin response is out; what restarts it is the platform, or the drill runner."""
    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)


class ActiveFault:
    def __init__(self, spec: Any, fault_id: str | None = None) -> None:
        self.id = fault_id or "flt_" + uuid.uuid4().hex[:12]
        self.spec = spec
        self.started_at = time.time()
        self.expires_at = self.started_at + spec.ttl_seconds
        self.dormant = False  # set, but acting only after the restart it asked for
        # A comparison, never a regex (services.fault_spec.route_matcher): it runs on every
        # request, on the event loop.
        route = getattr(spec, "route", None)
        self.route: Callable[[str], bool] | None = route_matcher(route) if route else None
        self.stop: Callable[[], Awaitable[None]] | None = None

    def describe(self) -> dict:
        return {
            "id": self.id,
            "kind": self.spec.kind,
            "params": self.spec.model_dump(exclude={"kind"}),
            "started_at": self.started_at,
            "expires_at": self.expires_at,
        }


class FaultManager:
    """Active faults of one service instance, their side effects, and their expiry.

    Given only what the faults act on: the service's name (for errors and the audit trail), the
    audit file, how many connections `db_pool_exhaustion` holds by default (the pool's size plus
    its overflow), and how a restarted bad release shows its version (`set_version`).
    `database` is set once the service opens one (`Kit.open_database`); until then, and in a
    service without a database, `db_pool_exhaustion` does not apply.

    At most `max_faults` faults are active at once, `memory_growth` faults may hold
    `max_memory_mb` between them and `cpu_burn` faults run at most `max_cpu_threads` threads; a
    fault beyond a limit is refused with 409 (`add`).
    """

    def __init__(
        self,
        service: str,
        *,
        audit_path: Path,
        pool_capacity: int,
        set_version: Callable[[str], None],
        database: Database | None = None,
        max_faults: int = MAX_ACTIVE_FAULTS,
        max_memory_mb: int = MAX_FAULT_MEMORY_MB,
        max_cpu_threads: int = MAX_CPU_BURN_THREADS,
    ) -> None:
        self.service = service
        self.max_faults = max_faults
        self.max_memory_mb = max_memory_mb
        self.max_cpu_threads = max_cpu_threads
        # Specs being started (a starter may await): counted against the limits, so two
        # concurrent requests cannot both take the last place.
        self._starting: list[Any] = []
        self.audit_path = audit_path
        self.pool_capacity = pool_capacity
        self.set_version = set_version
        self.database = database
        self.active: dict[str, ActiveFault] = {}
        self.shutting_down = False
        self.request_faults: tuple[ActiveFault, ...] = ()  # read on every request: kept tiny
        self.starters: dict[str, Starter] = {
            "cpu_burn": self._cpu_burn,
            "memory_growth": self._memory_growth,
            "gc_pause": self._gc_pause,
            "crash": self._crash,
            "bad_release": self._bad_release,
        }
        self._reaper: asyncio.Task | None = None

    def supports(self, kind: str) -> bool:
        if kind == "db_pool_exhaustion":
            return self.database is not None
        if kind == "db_lock":  # SQLite's whole-database write lock; see DbLockFault
            return self.database is not None and self.database.is_sqlite
        return kind in REQUEST_KINDS or kind in self.starters

    def register(self, kind: str, starter: Starter) -> None:
        """A service adds a fault kind of its own (e.g. notification's worker stall)."""
        self.starters[kind] = starter

    async def add(self, spec: Any) -> ActiveFault:
        if not self.supports(spec.kind):
            raise ServiceError(
                422,
                "fault_not_supported",
                f"fault kind {spec.kind!r} does not apply to service {self.service!r}",
            )
        self._check_limits(spec)
        fault = ActiveFault(spec)
        starter = self.starters.get(spec.kind)
        if spec.kind == "db_pool_exhaustion":
            starter = self._db_pool_exhaustion
        if spec.kind == "db_lock":
            starter = self._db_lock
        self._starting.append(spec)
        try:
            if starter is not None:
                fault.stop = await starter(fault)
            self.active[fault.id] = fault
        finally:
            self._starting.remove(spec)
        self._refresh()
        self._audit("fault_set", fault)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())
        return fault

    def _check_limits(self, spec: Any) -> None:
        """Refuse (409, the standard error body) a fault that would pass a limit."""
        specs = [f.spec for f in self.active.values()] + self._starting
        if len(specs) >= self.max_faults:
            raise ServiceError(
                409,
                "fault_limit_reached",
                f"{self.service} already has {len(specs)} active faults (at most "
                f"{self.max_faults}): clear one first",
                details={"limit": self.max_faults, "active": len(specs)},
            )
        if spec.kind == "memory_growth":
            held = sum(s.max_mb for s in specs if s.kind == "memory_growth")
            if held + spec.max_mb > self.max_memory_mb:
                raise ServiceError(
                    409,
                    "fault_memory_limit_reached",
                    f"memory_growth faults on {self.service} would hold {held + spec.max_mb} MB "
                    f"(at most {self.max_memory_mb} MB)",
                    details={"limit_mb": self.max_memory_mb, "held_mb": held},
                )
        if spec.kind == "cpu_burn":
            threads = sum(1 for s in specs if s.kind == "cpu_burn")
            if threads + 1 > self.max_cpu_threads:
                raise ServiceError(
                    409,
                    "fault_cpu_limit_reached",
                    f"{self.service} already runs {threads} cpu_burn threads "
                    f"(at most {self.max_cpu_threads})",
                    details={"limit": self.max_cpu_threads, "active": threads},
                )

        if spec.kind == "gc_pause":
            active = sum(1 for s in specs if s.kind == "gc_pause")
            if active + 1 > MAX_GC_PAUSE_FAULTS:
                raise ServiceError(
                    409,
                    "fault_gc_limit_reached",
                    f"{self.service} already has {active} gc_pause fault "
                    f"(at most {MAX_GC_PAUSE_FAULTS})",
                    details={"limit": MAX_GC_PAUSE_FAULTS, "active": active},
                )

    async def remove(self, fault_id: str, reason: str = "cleared") -> bool:
        fault = self.active.pop(fault_id, None)
        if fault is None:
            return False
        self._refresh()
        if fault.stop is not None:
            await fault.stop()
        self._audit("fault_" + reason, fault)
        return True

    async def clear(self) -> int:
        ids = list(self.active)
        for fault_id in ids:
            await self.remove(fault_id)
        return len(ids)

    async def shutdown(self) -> None:
        self.shutting_down = True  # a release in progress stays for the next start
        for fault_id in list(self.active):
            await self.remove(fault_id, "ended_with_the_process")
        if self._reaper is not None:
            self._reaper.cancel()

    def _refresh(self) -> None:
        self.request_faults = tuple(
            f for f in self.active.values() if f.spec.kind in REQUEST_KINDS and not f.dormant
        )

    async def _reap(self) -> None:
        while self.active:
            now = time.time()
            for fault in [f for f in self.active.values() if f.expires_at <= now]:
                await self.remove(fault.id, "expired")
            next_expiry = min((f.expires_at for f in self.active.values()), default=now + 1)
            await asyncio.sleep(max(0.05, min(1.0, next_expiry - time.time())))

    def _audit(self, event: str, fault: ActiveFault) -> None:
        record = {"ts": time.time(), "event": event, "service": self.service, **fault.describe()}
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        with self.audit_path.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")

    # --- side effects of the non-request kinds ------------------------------------------

    @staticmethod
    def _in_thread(
        work: Callable[[threading.Event], None], name: str, join_seconds: float
    ) -> Callable[[], Awaitable[None]]:
        """Run `work(stop)` in a daemon thread; the stopper sets `stop` and joins it."""
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(stop,), name=name, daemon=True)
        thread.start()

        async def stopper() -> None:
            stop.set()
            await asyncio.to_thread(thread.join, join_seconds)

        return stopper

    async def _cpu_burn(self, fault: ActiveFault):
        load = fault.spec.load

        def burn(stop: threading.Event) -> None:
            while not stop.is_set():
                end = time.perf_counter() + 0.02 * load
                while time.perf_counter() < end:
                    pass
                time.sleep(0.02 * (1 - load))

        return self._in_thread(burn, "cpu-burn", 2)

    async def _memory_growth(self, fault: ActiveFault):
        hoard: list[bytearray] = []
        spec = fault.spec

        async def grow() -> None:
            # 1 MB chunks, as many as the rate has made due by now (any rate, 0.1 MB/s too).
            loop = asyncio.get_running_loop()
            start = loop.time()
            while len(hoard) < spec.max_mb:
                due = min(spec.max_mb, 1 + int((loop.time() - start) * spec.mb_per_second))
                while len(hoard) < due:
                    hoard.append(bytearray(os.urandom(1024)) * 1024)  # touched: counts as RSS
                await asyncio.sleep(0.1)

        task = asyncio.create_task(grow())

        async def stopper() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            hoard.clear()

        return stopper

    async def _gc_pause(self, fault: ActiveFault):
        spec = fault.spec
        # Objects live about two seconds: past the young generations, then garbage.
        ring: collections.deque[list] = collections.deque(maxlen=2 * spec.cycles_per_second)
        batch = max(1, spec.cycles_per_second // 100)

        def churn(stop: threading.Event) -> None:
            heap = [[] for _ in range(spec.heap_objects)]  # the "cache": live, walked by each
            n = 0  # full collection
            while not stop.is_set():
                began = time.perf_counter()
                for _ in range(batch):
                    node: list = [n]
                    node.append(node)  # a cycle: only the collector can free it
                    ring.append(node)
                    n += 1
                stop.wait(max(0.0, 0.01 - (time.perf_counter() - began)))
            heap.clear()
            ring.clear()

        return self._in_thread(churn, "cache-refresh", 5)

    async def _db_pool_exhaustion(self, fault: ActiveFault):
        db = self.database
        wanted = fault.spec.connections or self.pool_capacity
        held = []
        for _ in range(wanted):
            try:
                held.append(await asyncio.wait_for(db.engine.connect(), 1.0))
            except (TimeoutError, Exception):
                break

        async def stopper() -> None:
            for conn in held:
                await conn.close()

        return stopper

    async def _db_lock(self, fault: ActiveFault):
        path = self.database.engine.url.database
        hold, gap = fault.spec.hold_ms / 1000, (fault.spec.every_ms - fault.spec.hold_ms) / 1000

        def batch_job(stop: threading.Event) -> None:
            # Its own connection, outside the pool: another program working on the same file.
            conn = sqlite3.connect(path, timeout=10, isolation_level=None)
            try:
                while not stop.is_set():
                    conn.execute("BEGIN IMMEDIATE")  # the write lock; readers carry on (WAL)
                    stop.wait(hold)
                    conn.execute("COMMIT")
                    stop.wait(gap)
            finally:
                conn.close()

        return self._in_thread(batch_job, "batch-job", 15)

    async def _crash(self, fault: ActiveFault):
        # The hold first (the restarted process must find it), then leave time for the admin
        # response to be sent and die without cleanup, like a segfault.
        hold = {"exit_code": fault.spec.exit_code, "until": fault.expires_at}
        _write_json(crash_hold_path(self.audit_path, self.service), hold)
        asyncio.get_running_loop().call_later(0.2, os._exit, fault.spec.exit_code)
        return None

    def exit_if_held(self) -> None:
        """At startup: exit as the crash did while its hold lasts; an ended hold is removed."""
        path = crash_hold_path(self.audit_path, self.service)
        try:
            hold = orjson.loads(path.read_bytes())
            until, code = float(hold["until"]), int(hold["exit_code"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):  # unreadable: not a hold to honour
            path.unlink(missing_ok=True)
            return
        if time.time() < until:
            os._exit(code)
        path.unlink(missing_ok=True)

    async def _bad_release(self, fault: ActiveFault):
        """A deploy of a broken version: written down, then this process restarts; the new one
        starts as that version and fails its route (`resume_release`). Until the restart the
        old version serves as before (the fault is dormant here)."""
        saved = {"id": fault.id, "until": fault.expires_at, "spec": fault.spec.model_dump()}
        _write_json(release_path(self.audit_path, self.service), saved)
        fault.dormant = True
        _restart_soon()
        return None

    def resume_release(self) -> str | None:
        """At startup: a release in progress is this process's version and its active fault
        (same id, same end); its end, cleared or expired, is a rollback: the file goes and the
        process restarts as the old version. The version it runs as, or None."""
        path = release_path(self.audit_path, self.service)
        try:
            saved = orjson.loads(path.read_bytes())
            until = float(saved["until"])
            spec = BadReleaseFault.model_validate(
                {**saved["spec"], "ttl_seconds": max(until - time.time(), 0.001)}
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # unreadable or over: not a release to run
            path.unlink(missing_ok=True)
            return None
        if until <= time.time():
            path.unlink(missing_ok=True)
            return None
        fault = ActiveFault(spec, fault_id=str(saved["id"]))
        fault.expires_at = until

        async def rollback() -> None:
            if self.shutting_down:
                return
            path.unlink(missing_ok=True)
            _restart_soon()

        fault.stop = rollback
        self.active[fault.id] = fault
        self._refresh()
        self.set_version(spec.version)
        self._audit("fault_resumed", fault)
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return spec.version


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def admin_guard(admin_token: str) -> Callable[..., Awaitable[None]]:
    """The admin API's dependency: a Bearer token equal to `admin_token` (the default one only
    on loopback), compared in constant time."""
    expected = admin_token.encode()

    async def require_admin(
        request: Request, authorization: Annotated[str | None, Header(max_length=4096)] = None
    ) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ServiceError(
                401, "missing_token", "the admin API needs 'Authorization: Bearer <ADMIN_TOKEN>'"
            )
        # compare_digest: how long the comparison takes does not tell how much of it matched.
        if not hmac.compare_digest(token.encode(), expected):
            raise ServiceError(403, "forbidden", "wrong admin token")
        server = request.scope.get("server") or (None, None)
        if admin_token == DEFAULT_ADMIN_TOKEN and not _is_loopback(server[0]):
            raise ServiceError(
                403,
                "default_token_refused",
                "the default admin token only works on loopback; set ADMIN_TOKEN",
            )

    return require_admin


def admin_router(faults: FaultManager, admin_token: str) -> APIRouter:
    """The admin API of one app (built per app, like the manager it drives)."""
    router = APIRouter(
        prefix="/admin/faults",
        include_in_schema=False,
        dependencies=[Depends(admin_guard(admin_token))],
    )

    @router.get("")
    async def list_faults() -> dict:
        return {
            "service": faults.service,
            "faults": [f.describe() for f in faults.active.values()],
            "kinds": [k for k in FAULT_KINDS if faults.supports(k)],
        }

    @router.post("", status_code=201)
    async def set_fault(body: FaultIn) -> dict:
        return (await faults.add(body.fault)).describe()

    @router.delete("/{fault_id}")
    async def clear_fault(fault_id: str) -> dict:
        if not await faults.remove(fault_id):
            raise ServiceError(404, "fault_not_found", f"no active fault {fault_id}")
        return {"cleared": 1}

    @router.delete("")
    async def clear_all() -> JSONResponse:
        return JSONResponse({"cleared": await faults.clear()})

    return router
