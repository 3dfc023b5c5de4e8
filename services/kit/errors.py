"""One JSON error body for every 4xx/5xx: {"code", "message", "correlation_id", "details"?}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .context import CORRELATION_HEADER, CORRELATION_SCOPE_KEY, correlation_id_var
from .logs import get_logger

log = get_logger()


class ErrorBody(BaseModel):
    code: str
    message: str
    correlation_id: str | None = None
    details: Any = None


class ServiceError(Exception):
    """A failure with a status and a stable machine-readable code (e.g. 402 card_declined)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class DownstreamError(ServiceError):
    """Another service failed us: 502 (bad answer), 503 (unreachable) or 504 (too slow)."""

    def __init__(self, peer: str, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message, details={"peer": peer})
        self.peer = peer
        # True when the peer may have acted on the request (a timeout, a 5xx): the outcome is
        # unknown and must be asked for, never assumed to be a failure.
        self.maybe_processed = False


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict | None = None
) -> JSONResponse:
    body = {"code": code, "message": message, "correlation_id": correlation_id_var.get() or None}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _clean_validation_errors(errors: list[dict]) -> list[dict]:
    # Only location, message and type: pydantic's "input" may echo a password or a card number.
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation_errors(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(422, "validation_error", f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(
            exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Outside the telemetry middleware (Starlette answers an unhandled exception outermost):
        # the request's correlation id comes back from its scope, for the line, body and header.
        cid = request.scope.get(CORRELATION_SCOPE_KEY, "")
        token = correlation_id_var.set(cid)
        try:
            log.error("unhandled_exception", error=repr(exc), exc_info=exc)
            headers = {CORRELATION_HEADER: cid} if cid else None
            return error_response(500, "internal_error", "internal server error", headers=headers)
        finally:
            correlation_id_var.reset(token)
