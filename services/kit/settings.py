"""One settings class for every service: configuration comes from the environment only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.fault_spec import DEFAULT_ADMIN_TOKEN
from services.topology import SERVICES, SERVICES_BY_NAME

DEV_JWT_SECRET = "triagelab-dev-secret-change-me-0123456789"
"""The JWT signing key that ships in the repository: accepted only with LAB_MODE=local."""
DEV_INTERNAL_TOKEN = "triagelab-dev-internal-token-local-lab-only"
"""The service credential that ships in the repository: accepted only with LAB_MODE=local."""
SHIPPED_SECRETS = frozenset({DEV_JWT_SECRET, DEV_INTERNAL_TOKEN, DEFAULT_ADMIN_TOKEN})
"""Every secret value written in this repository (settings, fault_spec, .env, compose)."""
MIN_SECRET_BYTES = 32
SECRET_SETTINGS = ("jwt_secret", "admin_token", "internal_token")


class InsecureSettings(SystemExit):
    """A service refuses to start on a missing, short or shipped secret (docs/security.md).

    A SystemExit, so `uvicorn --factory` stops with this one message, not a traceback."""


class Settings(BaseSettings):
    """Every variable is documented in docs/configuration.md; keep the two in step."""

    # extra="forbid": a misspelt setting passed in code (tests, benchmarks) is an error, not
    # silently dropped; unrelated environment variables are still ignored.
    model_config = SettingsConfigDict(env_file=None, extra="forbid", case_sensitive=False)

    service_name: str = ""  # set by each service's factory, not by the environment
    service_version: str = "1.0.0"
    deployment_environment: str = "lab"
    log_level: str = "info"

    # Telemetry
    otel_exporter_otlp_endpoint: str = ""
    span_file: str = ""
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)

    # Data
    data_dir: Path = Path("var/data")
    database_url: str = ""
    db_pool_size: int = Field(5, ge=1, le=200)
    db_max_overflow: int = Field(5, ge=0, le=200)
    db_pool_timeout_seconds: float = Field(2.0, gt=0, le=60)

    # Downstream services (default ports: services/topology.toml) and per-hop timeouts
    auth_url: str = SERVICES_BY_NAME["auth"].default_url
    order_url: str = SERVICES_BY_NAME["order"].default_url
    payment_url: str = SERVICES_BY_NAME["payment"].default_url
    notification_url: str = SERVICES_BY_NAME["notification"].default_url
    auth_timeout_seconds: float = Field(1.0, gt=0, le=60)
    order_timeout_seconds: float = Field(6.0, gt=0, le=60)
    payment_timeout_seconds: float = Field(2.0, gt=0, le=60)
    notification_timeout_seconds: float = Field(1.0, gt=0, le=60)
    http_retries: int = Field(2, ge=0, le=10)
    http_retry_backoff_seconds: float = Field(0.05, ge=0, le=10)
    # A request's whole budget: the gateway's (the edge) is this; every other service takes its
    # caller's remaining budget from X-Request-Budget-Ms, capped by this. docs/architecture.md
    # has the table of nested budgets.
    request_budget_seconds: float = Field(8.0, gt=0, le=120)

    # Requests
    max_body_bytes: int = Field(64 * 1024, ge=1024)

    # The memory limit the deployment gives this process, in MiB, exported as
    # process_memory_limit_bytes when no cgroup limit is found (natively: nothing enforces it).
    memory_limit_mb: int | None = Field(None, gt=0, le=1024 * 1024)

    # Secrets (docs/security.md). The values that ship in the repository are refused unless
    # LAB_MODE=local says this is a local lab on loopback; `labctl up` generates its own.
    lab_mode: Literal["", "local"] = ""
    admin_token: str = DEFAULT_ADMIN_TOKEN  # the admin API (fault injection)
    fault_audit_file: str = ""
    internal_token: str = DEV_INTERNAL_TOKEN  # service-to-service credential (X-Internal-Token)

    # auth (jwt_secret also in order, which verifies the shopper's token itself)
    jwt_secret: str = DEV_JWT_SECRET
    jwt_ttl_seconds: int = Field(3600, ge=1)
    # Login limits: attempts per client address, failed attempts per account, password hashes
    # at once (argon2id, 19 MiB each) and logins waiting for one; beyond any of them: 429.
    login_client_attempts: int = Field(1200, ge=1)
    login_client_window_seconds: float = Field(60.0, gt=0, le=86_400)
    login_account_failures: int = Field(10, ge=1)
    login_account_window_seconds: float = Field(300.0, gt=0, le=86_400)
    login_hash_concurrency: int = Field(4, ge=1, le=64)
    login_hash_queue: int = Field(64, ge=0, le=10_000)

    # order
    order_reconcile_seconds: float = Field(5.0, gt=0, le=300)
    order_settle_after_seconds: float = Field(15.0, gt=0, le=3600)
    order_audit_seconds: float = Field(30.0, gt=0, le=3600)
    outbox_poll_seconds: float = Field(0.5, gt=0, le=60)
    outbox_give_up_seconds: float = Field(3600.0, gt=0)

    # payment
    payment_latency_median_ms: float = Field(40.0, ge=0)
    payment_latency_sigma: float = Field(0.45, ge=0, le=3)

    # notification
    notification_latency_median_ms: float = Field(30.0, ge=0)
    notification_failure_rate: float = Field(0.01, ge=0, le=1)
    notification_max_attempts: int = Field(5, ge=1, le=50)
    notification_retry_base_seconds: float = Field(0.5, ge=0)
    notification_poll_seconds: float = Field(0.5, gt=0)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("LOG_LEVEL must be one of debug, info, warning, error")
        return value

    @field_validator("lab_mode", mode="before")
    @classmethod
    def _lab_mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def secret_problems(self) -> list[str]:
        """Why these secrets must not be used (empty when they are fine)."""
        problems = []
        for name in SECRET_SETTINGS:
            value: str = getattr(self, name)
            env = name.upper()
            size = len(value.encode())
            if size < MIN_SECRET_BYTES:
                problems.append(
                    f"{env} is {size} bytes long; at least {MIN_SECRET_BYTES} are required"
                )
            elif value in SHIPPED_SECRETS and self.lab_mode != "local":
                problems.append(
                    f"{env} is the development value that ships in the repository; it is "
                    "accepted only in a local lab (LAB_MODE=local)"
                )
        return problems

    def require_safe_secrets(self) -> None:
        """Raise InsecureSettings (exit with one clear message) unless every secret is usable."""
        problems = self.secret_problems()
        if problems:
            who = self.service_name or "service"
            raise InsecureSettings(
                f"{who}: refusing to start: " + "; ".join(problems) + ". Set your own secrets "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))'), start the lab "
                "with `labctl up` (it generates them), or set LAB_MODE=local for a local lab "
                "on loopback (docs/security.md)."
            )

    @model_validator(mode="after")
    def _budgets_nest(self) -> Settings:
        # A pending order younger than a request's whole budget may still have its request in
        # flight: the reconciler must not settle it under that request's feet.
        if self.order_settle_after_seconds <= self.request_budget_seconds:
            raise ValueError(
                f"ORDER_SETTLE_AFTER_SECONDS ({self.order_settle_after_seconds}) must exceed "
                f"REQUEST_BUDGET_SECONDS ({self.request_budget_seconds})"
            )
        return self

    def for_service(self, name: str) -> Settings:
        """The same settings with the service name filled in (a factory names its service)."""
        if name not in SERVICES:
            raise ValueError(f"unknown service {name!r}")
        return self.model_copy(update={"service_name": name})

    def db_url(self) -> str:
        """DATABASE_URL if set, else a SQLite file of this service's own under DATA_DIR."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / (self.service_name + '.db')}"
