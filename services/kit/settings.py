"""One settings class for every service: configuration comes from the environment only."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.fault_spec import DEFAULT_ADMIN_TOKEN
from services.topology import SERVICES, SERVICES_BY_NAME


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

    # Admin API (fault injection)
    admin_token: str = DEFAULT_ADMIN_TOKEN
    fault_audit_file: str = ""

    # auth
    jwt_secret: str = "triagelab-dev-secret-change-me-0123456789"
    jwt_ttl_seconds: int = Field(3600, ge=1)

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
