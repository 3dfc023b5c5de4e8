"""What a fault is: the body the admin API takes under ``fault``, and the drill files' field type.

Pydantic only (no FastAPI, no OpenTelemetry), so labctl validates a drill's faults with exactly
the models the services enforce: ``jiter_ms`` in a drill file fails ``make test``, not a run.
Each kind says whether it acts on requests and which services it applies to; the kit
(services/kit/faults.py) implements the side effects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator
from starlette.routing import compile_path

DEFAULT_ADMIN_TOKEN = "triagelab-admin-dev-token-local-lab-only"
"""The admin API's development bearer token (it ships in the repository): the services accept
it only with LAB_MODE=local (docs/security.md), and refuse it off loopback (ADMIN_TOKEN)."""
MAX_TTL = 3600

# Per service instance, so that the admin API cannot be used to take the host down: a fault set
# beyond one of these is refused with 409 (services/kit/faults.py, docs/faults.md).
MAX_ACTIVE_FAULTS = 8
"""Active faults of one service, of any kind."""
MAX_FAULT_MEMORY_MB = 2048
"""The sum of ``max_mb`` over one service's active ``memory_growth`` faults."""
MAX_CPU_BURN_THREADS = 2
"""Active ``cpu_burn`` faults of one service (each runs one thread)."""
MAX_GC_PAUSE_FAULTS = 1
"""Active ``gc_pause`` faults of one service (each holds a heap and runs one thread)."""

# A fault's `route` is a path, never a regular expression a client writes: a path template
# (literal segments and `{name}` segments, compiled by Starlette as its own routes are: `{name}`
# is `[^/]+`, so matching is linear and cannot backtrack) or a literal prefix ending in `*`.
_TEMPLATE = re.compile(r"(/([A-Za-z0-9._~-]*|\{[A-Za-z_][A-Za-z0-9_]*\}))+")
_LITERAL_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
ROUTE_HELP = (
    "route is a path, not a regex: '/payments/charge' (exactly that path), "
    "'/orders/{order_id}' (a template: {name} matches one segment) or '/payments/*' "
    "(a literal prefix)"
)


def route_matcher(route: str) -> Callable[[str], bool]:
    """What a fault's `route` matches, as a function of the request path (ValueError if the
    route is not one of the forms of ROUTE_HELP)."""
    if route.endswith("*"):
        prefix = route[:-1]
        if not _LITERAL_PATH.fullmatch(prefix) or prefix.endswith("."):  # "/api/.*": a regex
            raise ValueError(ROUTE_HELP + "; only the last character may be '*'")
        return lambda path: path.startswith(prefix)
    if not _TEMPLATE.fullmatch(route):
        raise ValueError(ROUTE_HELP)
    regex = compile_path(route)[0]
    return lambda path: regex.match(path) is not None


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: ClassVar[bool] = False  # acts on each request (the fault middleware)
    services: ClassVar[frozenset[str] | None] = None  # None: every service
    ttl_seconds: float = Field(300, gt=0, le=MAX_TTL, description="auto-expiry, at most 1 hour")


class _RequestFault(_Fault):
    request: ClassVar[bool] = True
    probability: float = Field(1.0, ge=0, le=1)
    route: str | None = Field(
        None,
        max_length=200,
        description="the request paths it applies to: '/payments/charge' (exact), "
        "'/orders/{order_id}' (template) or '/payments/*' (literal prefix); none: every path",
    )

    card_prefix: str | None = Field(
        None,
        pattern=r"^[0-9]{1,8}$",
        description="only requests whose JSON body's card_number starts with these digits (a "
        "card range, as an issuer's BIN: '6011'); none: any request",
    )

    @field_validator("route")
    @classmethod
    def _route(cls, value: str | None) -> str | None:
        if value is not None:
            route_matcher(value)  # ValueError (a 422) unless it is a path of a known form
        return value


class LatencyFault(_RequestFault):
    """Adds ms (± jitter_ms) before the request is handled."""

    kind: Literal["latency"]
    ms: float = Field(gt=0, le=60_000)
    jitter_ms: float = Field(0, ge=0, le=60_000)


# What a failing request raises: exception types a real service raises, with no word of a fault.
Failure = Literal[
    "ConnectionResetError", "TimeoutError", "RuntimeError", "KeyError", "AttributeError",
    "TypeError", "ValueError",
]  # fmt: skip
FAILURE_EXCEPTIONS: tuple[str, ...] = get_args(Failure)


class _FailingFault(_RequestFault):
    """A request that fails. With status 500 it raises `exception(message)` in the request's
    own handling, so it takes the path a real bug takes: the error-level `unhandled_exception`
    line with its traceback, the span's exception event and error status, a 500 body. Another
    5xx is answered the way a failed dependency is, with that status."""

    status: int = Field(500, ge=500, le=599)
    exception: Failure = "ConnectionResetError"
    message: str = Field("[Errno 104] Connection reset by peer", max_length=200)


class ErrorFault(_FailingFault):
    """Fails requests: an infrastructure failure by default (a connection reset)."""

    kind: Literal["error"]


class HangFault(_RequestFault):
    """Holds the request for `seconds` (longer than any caller waits), then handles it."""

    kind: Literal["hang"]
    seconds: float = Field(30, gt=0, le=600)


class CpuBurnFault(_Fault):
    """A thread that keeps the CPU (and the GIL) busy `load` of the time."""

    kind: Literal["cpu_burn"]
    load: float = Field(0.8, gt=0, le=1)


class MemoryGrowthFault(_Fault):
    """Allocates `mb_per_second` until `max_mb`, like a leak."""

    kind: Literal["memory_growth"]
    mb_per_second: float = Field(5, gt=0, le=100)
    max_mb: int = Field(300, gt=0, le=2048)


class GcPauseFault(_Fault):
    """Garbage-collection pauses, the way a service gets them: a large heap of live objects (a
    cache), and objects with reference cycles that live a few seconds and die. Reference
    counting cannot free a cycle, so they reach the oldest generation, and each of its
    collections stops the process (the GIL) for as long as walking the whole heap takes:
    ~0.4-0.7 s for 3 million objects on this lab's machine, every several seconds."""

    kind: Literal["gc_pause"]
    heap_objects: int = Field(3_000_000, ge=10_000, le=6_000_000)
    cycles_per_second: int = Field(150_000, ge=1_000, le=500_000)


class DbPoolExhaustionFault(_Fault):
    """Checks out `connections` from the pool and holds them (default: all of them)."""

    services: ClassVar[frozenset[str] | None] = frozenset({"order", "payment", "notification"})
    kind: Literal["db_pool_exhaustion"]
    connections: int | None = Field(None, gt=0, le=400)


class DbLockFault(_Fault):
    """Another client of the service's SQLite database (a batch job, a migration) holds its
    write lock `hold_ms` of every `every_ms`: writes queue behind it (busy_timeout), reads run
    on (WAL). The service's own queries are ordinary; they wait for a lock, not for work."""

    services: ClassVar[frozenset[str] | None] = frozenset({"order", "payment", "notification"})
    kind: Literal["db_lock"]
    hold_ms: float = Field(900, gt=0, le=5_000)
    every_ms: float = Field(1200, gt=0, le=60_000)

    @model_validator(mode="after")
    def _gaps(self) -> DbLockFault:
        if self.every_ms <= self.hold_ms:
            raise ValueError("every_ms must be longer than hold_ms (the lock is let go in between)")
        return self


class WorkerStallFault(_Fault):
    """notification: the delivery worker stops picking up work."""

    services: ClassVar[frozenset[str] | None] = frozenset({"notification"})
    kind: Literal["worker_stall"]


class CrashFault(_Fault):
    """The process exits, and exits again at startup until the fault ends (a crash loop where
    the platform restarts it; services.kit.faults.crash_hold_path)."""

    kind: Literal["crash"]
    exit_code: int = Field(70, ge=1, le=255)


class BadReleaseFault(_FailingFault):
    """A new version label, and one route starts failing with a bug of the new code."""

    kind: Literal["bad_release"]
    version: str = Field("1.1.0", min_length=1, max_length=40)
    probability: float = Field(0.3, ge=0, le=1)
    exception: Failure = "AttributeError"
    message: str = Field("'NoneType' object has no attribute 'get'", max_length=200)


class SigningKeyMismatchFault(_Fault):
    """auth: tokens are verified with a key other than the one that signed them (401 storm)."""

    services: ClassVar[frozenset[str] | None] = frozenset({"auth"})
    kind: Literal["signing_key_mismatch"]


_MODELS = (
    LatencyFault,
    ErrorFault,
    HangFault,
    CpuBurnFault,
    MemoryGrowthFault,
    GcPauseFault,
    DbPoolExhaustionFault,
    DbLockFault,
    WorkerStallFault,
    CrashFault,
    BadReleaseFault,
    SigningKeyMismatchFault,
)
FaultSpec = Annotated[Union[_MODELS], Field(discriminator="kind")]  # noqa: UP007
"""Any one fault, told apart by ``kind``."""
MODELS: dict[str, type[_Fault]] = {
    get_args(m.model_fields["kind"].annotation)[0]: m for m in _MODELS
}
FAULT_KINDS: tuple[str, ...] = tuple(MODELS)
REQUEST_KINDS = frozenset(k for k, m in MODELS.items() if m.request)
FAULT_ADAPTER: TypeAdapter[FaultSpec] = TypeAdapter(FaultSpec)


def applies(kind: str, service: str) -> bool:
    """Does this fault kind exist in this service? (GET /admin/faults says so at run time.)"""
    allowed = MODELS[kind].services
    return allowed is None or service in allowed


class FaultIn(BaseModel):
    """The admin API's request body: ``{"fault": {"kind": ..., ...}}``."""

    fault: FaultSpec
