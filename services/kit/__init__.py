"""The shared kit: every service's settings, telemetry, health, errors, clients and faults."""

from .app import Kit
from .deps import DatabaseDep, KitDep, LogDep, SettingsDep, get_kit, peer_client
from .errors import DownstreamError, ServiceError
from .settings import Settings

__all__ = [
    "DatabaseDep",
    "DownstreamError",
    "Kit",
    "KitDep",
    "LogDep",
    "ServiceError",
    "Settings",
    "SettingsDep",
    "get_kit",
    "peer_client",
]
