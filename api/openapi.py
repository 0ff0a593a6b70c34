"""The OpenAPI document lists every status code an operation can answer, each error with
OpenAI's envelope, so clients (and schemathesis' status-code check) know what to expect.
Validation errors are 400s here, not FastAPI's default 422. Every operation but the
health checks needs a bearer key (the security scheme), and the upload's multipart body
is described (the route streams it itself, so FastAPI cannot see it)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }},
}

# status -> when it is answered
EVERYWHERE = {
    "400": "invalid request: a parameter is missing, malformed or out of range",
    "401": "no API key, or an unknown, revoked or suspended one",
    "403": "the key lacks a scope, or is of the wrong kind (tenant or admin)",
    "404": "no such object in this account",
    "429": "rate limit, concurrency cap or quota exceeded (see Retry-After)",
    "500": "unexpected server error",
    "503": "a dependency (database, object storage) is unavailable, or the service is "
           "at capacity (see Retry-After)",
}
WRITES = {
    "409": "conflicts with the object's state, or the Idempotency-Key is in use",
    "413": "request body larger than the limit",
}
POSTS = {
    "422": "the Idempotency-Key was already used with a different request",
}
UPLOADS = {
    "415": "not multipart/form-data",
}
PUBLIC = ("/healthz", "/readyz", "/metrics")
SECURITY_SCHEMES = {"bearer": {
    "type": "http", "scheme": "bearer",
    "description": "An API key: a tenant's (`lm-…`) for the tenant API, an operator's for "
                   "/v1/admin and /ops. `Authorization: Bearer <key>`."}}
UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "a JSONL dataset (chat, prompt/completion, preference); "
                                "checked line by line as it streams in"},
        "purpose": {"type": "string", "enum": ["fine-tune"]},
    }}}}}


def statuses(path: str, method: str) -> dict[str, str]:
    found = dict(EVERYWHERE)
    if method in ("post", "put", "patch", "delete"):
        found |= WRITES
    if method == "post":
        found |= POSTS
    if path == "/v1/files" and method == "post":
        found |= UPLOADS
    return found


def install(app: FastAPI) -> None:
    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            components = document.setdefault("components", {})
            components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
            components["securitySchemes"] = SECURITY_SCHEMES
            document["security"] = [{"bearer": []}]
            for path, operations in document.get("paths", {}).items():
                for method, operation in operations.items():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)  # validation errors are 400s
                    if path in PUBLIC:
                        operation["security"] = []  # no key needed
                        continue
                    if path == "/v1/files" and method == "post":
                        operation["requestBody"] = UPLOAD_BODY
                    for status, description in statuses(path, method).items():
                        responses.setdefault(status, {
                            "description": description, "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Error"}}}})
            for name in ("HTTPValidationError", "ValidationError"):
                document["components"]["schemas"].pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
