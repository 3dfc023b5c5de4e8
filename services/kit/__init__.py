"""The shared kit: every service's settings, telemetry, health, errors, clients and faults."""

from .app import Kit, KitDep, get_kit
from .errors import DownstreamError, ServiceError
from .settings import Settings

__all__ = ["DownstreamError", "Kit", "KitDep", "ServiceError", "Settings", "get_kit"]
