"""Every error leaves the API in OpenAI's envelope:
``{"error": {"message", "type", "param", "code"}}``. A 500 never carries a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import LoramillError

log = logging.getLogger("loramill.api")


def envelope(
    status: int, message: str, *, type: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names the union branch it tried ("int", "literal['auto']"); users don't care
    parts = [p for p in parts if not p.startswith(("literal[", "function-")) and p not in (
        "int", "float", "str", "bool", "list[str]", "constrained-float",
    )]
    return ".".join(parts) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
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
                            code="method_not_allowed")
        return envelope(exc.status_code, str(exc.detail), type="invalid_request_error")

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc).__name__)
        return envelope(503, "the database is unavailable; nothing was changed, please "
                        "retry shortly", type="server_error", code="database_unavailable",
                        headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "internal server error; the request was not completed",
                        type="server_error", code="internal_error")
