"""The services' fault admin API as a drill uses it:
the bearer token; a service that is down is tolerated."""

from __future__ import annotations

from typing import Any

import httpx

from labctl.config import HTTP_TIMEOUT, LabError


class FaultClient:
    """The admin API of every service (bearer token), tolerant of a service that is down."""

    def __init__(self, urls: dict[str, str], token: str) -> None:
        self.urls = urls
        self.http = httpx.Client(
            timeout=HTTP_TIMEOUT, trust_env=False, headers={"Authorization": f"Bearer {token}"}
        )

    def set(self, service: str, fault: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"{self.urls[service]}/admin/faults", json={"fault": fault})
        if resp.status_code != 201:
            raise LabError(f"{service} refused fault {fault}: {resp.status_code} {resp.text}")
        return resp.json()

    def kinds_active(self, service: str) -> list[str]:
        """The kinds of the faults active on `service` ([] when it does not answer)."""
        try:
            resp = self.http.get(f"{self.urls[service]}/admin/faults")
            return [f["kind"] for f in resp.json()["faults"]] if resp.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError):
            return []

    def clear(self, service: str, fault_id: str | None = None) -> bool:
        path = "/admin/faults" + (f"/{fault_id}" if fault_id else "")
        try:
            resp = self.http.delete(f"{self.urls[service]}{path}")
        except httpx.HTTPError:
            return False
        return resp.status_code in (200, 404)

    def clear_all(self) -> dict[str, bool]:
        return {service: self.clear(service) for service in self.urls}

    def close(self) -> None:
        self.http.close()
