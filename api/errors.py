"""Every error leaves the API in OpenAI's envelope:
``{"error": {"message", "type", "param", "code"}}``. A 500 never carries a traceback; the
last-resort handler for unexpected exceptions is api/request_ids.py, so that a 500 is
logged once, as JSON, and the connection stays usable."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api import idempotency
from core.kit.db import UNREACHABLE
from core.kit.errors import LoramillError

log = logging.getLogger("loramill.api")


def envelope(
    status: int, message: str, *, type: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# pydantic's words for a number out of range: of a union's branches ("auto" or a number),
# these say the most
RANGE_ERRORS = ("int_range", "greater_than", "greater_than_equal", "less_than",
                "less_than_equal")


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names the union branch it tried ("int", "literal['auto']"); users don't care
    parts = [p for p in parts if not p.startswith(("literal[", "function-")) and p not in (
        "int", "float", "str", "bool", "list[str]", "constrained-float",
    )]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    # of a union's branches ("auto" or an integer in range), the range says the most
    ranged = [e for e in errors if e.get("type") in RANGE_ERRORS]
    first = (ranged or errors or [{"loc": (), "msg": "invalid request"}])[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"missing required parameter: '{param}'", param
    if first.get("type") == "extra_forbidden":
        return f"unrecognized request argument: '{param}'", param
    prefix = f"invalid value for '{param}': " if param else ""
    return prefix + msg.removeprefix("Value error, "), param


def install(app: FastAPI) -> None:
    @app.exception_handler(LoramillError)
    async def _domain(request: Request, exc: LoramillError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return envelope(
            exc.status_code, exc.message, type=exc.type, param=exc.param, code=exc.code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        idempotency.not_reached(request)
        message, param = _validation_message(exc)
        return envelope(400, message, type="invalid_request_error", param=param,
                        code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown URL: {request.method} {request.url.path}"
            return envelope(404, message, type="invalid_request_error", code="unknown_url")
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            return envelope(405, message, type="invalid_request_error",
                            code="method_not_allowed",
                            headers={"Allow": ", ".join(_allowed_methods(request))})
        return envelope(exc.status_code, str(exc.detail), type="invalid_request_error")

    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc).__name__)
        return envelope(503, "the database is unavailable; nothing was changed, please "
                        "retry shortly", type="server_error", code="database_unavailable",
                        headers={"Retry-After": "2"})

    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _database_down)

    @app.exception_handler(PoolTimeout)
    async def _saturated(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database connection pool exhausted on %s %s", request.method,
                    request.url.path)
        return envelope(503, "the service is at capacity; nothing was changed, please retry "
                        "shortly", type="server_error", code="server_busy",
                        headers={"Retry-After": "1"})

    # A safety net: inputs are checked before they reach the database, so these mean a
    # check is missing somewhere; still, a client error is a 4xx.
    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: Exception) -> JSONResponse:
        log.warning("integrity error on %s %s: %s", request.method, request.url.path,
                    _first_line(exc))
        return envelope(409, "the request conflicts with the current state of an object "
                        "(it may have been created or changed concurrently); reload and "
                        "retry", type="invalid_request_error", code="conflict")

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: Exception) -> JSONResponse:
        log.warning("data error on %s %s: %s", request.method, request.url.path,
                    _first_line(exc))
        return envelope(400, "a value in the request cannot be stored (out of range or "
                        "malformed)", type="invalid_request_error", code="invalid_value")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    return [method for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def internal_error() -> JSONResponse:
    return envelope(500, "internal server error; the request was not completed",
                    type="server_error", code="internal_error")
