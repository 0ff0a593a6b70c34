"""``Idempotency-Key`` on every POST (design.md §5), as Stripe defines it.

Two halves:

- :class:`IdempotencyMiddleware` notes the key, hashes the request (method, path, body) as
  it streams by, and captures the response.
- :func:`claim` runs inside the request, *after* authentication, suspension, scopes and
  the rate limit (the dependencies that call it, in api/deps.py, depend on those), so a
  stored response is only ever replayed to a caller allowed to make that request now.

The first request with a key reserves it: a row with no response whose ``expires_at`` is
a lease, renewed while the request runs, so a reservation left by a crashed process
expires within ``idempotency_lease_seconds``. Its response is stored only if the
endpoint produced it: not when the request was refused before (a body that failed
validation), and never a 401, 403, 409, 429 or 5xx, whose retry may well succeed; those
release the key instead. No secret is stored: a replayed key creation says the secret was
shown once. A retry with the same key and request gets the stored response
(``Idempotent-Replayed: true``); with another request, a 422. Retries that arrive while
the first still runs wait for it (so 50 concurrent identical POSTs make one job) without
holding a thread or a database connection. Keys are per tenant, and operators have a
namespace of their own; a stored response lives 24 hours. What is kept is decided in
core/idempotency/service.py; the table's SQL is core/idempotency/repository.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.edge import UPLOAD_PATH
from core.idempotency import repository, service
from core.idempotency.models import IdempotencyKey
from core.kit.db import admin_scope, tenant_scope
from core.kit.errors import Conflict, LoramillError, Unprocessable
from core.kit.settings import get_settings

log = logging.getLogger("loramill.idempotency")
HEADER = b"idempotency-key"
SCOPE_KEY = "loramill.idempotency"
WAIT_SECONDS = 120.0
MAX_KEY = 255
MAX_KEPT_UPLOAD = 8 * 1024 * 1024  # a waiting upload keeps its body up to this, to run later


class BodyDigest:
    """sha256 of what a request means: method, path and body, where a multipart body is
    hashed part by part (headers and data) so its random boundary does not count."""

    def __init__(self, scope: Scope):
        self._sha = hashlib.sha256(f"{scope['method']} {scope['path']}\n".encode())
        headers = dict(scope["headers"])
        content_type, params = parse_options_header(headers.get(b"content-type", b""))
        self._parser: MultipartParser | None = None
        if content_type == b"multipart/form-data" and b"boundary" in params:
            def data(name: bytes) -> Any:
                return lambda d, start, end: self._sha.update(name + d[start:end])

            self._parser = MultipartParser(params[b"boundary"], callbacks={
                "on_part_begin": lambda: self._sha.update(b"\x00part"),
                "on_header_field": data(b"\x00h"), "on_header_value": data(b"\x00v"),
                "on_part_data": data(b""),
            })

    def update(self, chunk: bytes) -> None:
        if self._parser is None:
            self._sha.update(chunk)
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            self._parser = None  # malformed: the endpoint will say so; hash the rest raw
            self._sha.update(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


@dataclass
class Pending:
    """One POST that carries a key, from the middleware to :func:`claim` and back."""

    key: str
    digest: BodyDigest
    body_done: bool = False
    spent: bool = False  # its (streamed) body was read to compare it: it cannot run
    scope_id: str | None = None  # set once claimed: the reservation is this request's
    tenant_id: str | None = None
    refused: bool = False  # answered before its endpoint ran: never stored
    status: int = 500
    body: bytearray = field(default_factory=bytearray)
    lease: asyncio.Task[None] | None = None


# ----- the table: one short transaction each, as the tenant (operators: the admin role)

def _transaction(tenant_id: str | None) -> Any:
    return tenant_scope(tenant_id) if tenant_id else admin_scope()


def _lease() -> timedelta:
    return timedelta(seconds=get_settings().idempotency_lease_seconds)


def _reserve(scope: str, tenant_id: str | None, key: str) -> bool:
    with _transaction(tenant_id) as session:
        return repository.reserve(session, scope, tenant_id, key, _lease())


def _load(scope: str, tenant_id: str | None, key: str) -> IdempotencyKey | None:
    with _transaction(tenant_id) as session:
        return repository.get(session, scope, key)


def _renew(scope: str, tenant_id: str | None, key: str) -> None:
    with _transaction(tenant_id) as session:
        repository.renew(session, scope, key, _lease())


def _finish(pending: Pending, response: dict[str, Any] | None) -> None:
    """Keep the response, or (None) release the key for a retry."""
    assert pending.scope_id is not None
    with _transaction(pending.tenant_id) as session:
        if response is None:
            repository.release(session, pending.scope_id, pending.key)
        else:
            repository.store(session, pending.scope_id, pending.key,
                             request_hash=pending.digest.hexdigest(), status=pending.status,
                             response=response, keep=service.KEEP)


# ----- inside the request: after authentication and scopes --------------------------------

class IdempotentReplay(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(status)
        self.status, self.body = status, body


def install(app: FastAPI) -> None:
    @app.exception_handler(IdempotentReplay)
    async def _replay(request: Request, exc: IdempotentReplay) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status,
                            headers={"Idempotent-Replayed": "true"})


def pending_of(request: Request) -> Pending | None:
    found: Pending | None = request.scope.get(SCOPE_KEY)
    return found


def not_reached(request: Request) -> None:
    """The request was refused before its endpoint ran (e.g. its body was invalid)."""
    pending = pending_of(request)
    if pending is not None:
        pending.refused = True


async def claim(request: Request, tenant_id: str | None) -> None:
    """Reserve the request's key for it, or answer with the stored response (raising
    :class:`IdempotentReplay`), or wait while the first request with the key runs.
    ``tenant_id`` None: an operator's request."""
    pending = pending_of(request)
    if pending is None or pending.scope_id is not None:
        return
    if not pending.body_done and request.url.path != UPLOAD_PATH:
        await request.body()  # small (api/edge.py): hash all of it; the endpoint reads a copy
    scope_id = service.scope_of(tenant_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    pause = 0.02
    while True:
        if await run_in_threadpool(_reserve, scope_id, tenant_id, pending.key):
            pending.scope_id, pending.tenant_id = scope_id, tenant_id
            pending.lease = asyncio.create_task(_keep_lease(scope_id, tenant_id, pending.key))
            return
        if not pending.body_done:
            await _read_upload(request, pending)  # to compare it with the first one
        row = await run_in_threadpool(_load, scope_id, tenant_id, pending.key)
        if row is not None and row.status_code is not None:
            if row.request_hash != pending.digest.hexdigest():
                raise Unprocessable(
                    "this Idempotency-Key was already used with a different request (method, "
                    "path or body); use a new key for a new request", param="Idempotency-Key",
                    code="idempotency_key_reused")
            raise IdempotentReplay(row.status_code, (row.response or {}).get("body"))
        if row is None and pending.spent:
            raise _retry("the first request with this Idempotency-Key did not complete; "
                         "retry it", "idempotency_key_released")
        if loop.time() > deadline:
            raise _retry("a request with this Idempotency-Key is still in progress",
                         "idempotency_key_in_progress")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)


async def _read_upload(request: Request, pending: Pending) -> None:
    """Read a waiting upload's whole body (hashing it); keep it if small, so the upload can
    still run should the first request fail."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) <= MAX_KEPT_UPLOAD:
        await request.body()  # the endpoint's stream replays it
        return
    async for _ in request.stream():
        pass
    pending.spent = True


def _retry(message: str, code: str) -> LoramillError:
    error = Conflict(message, param="Idempotency-Key", code=code)
    error.headers = {"Retry-After": "1"}
    return error


async def _keep_lease(scope_id: str, tenant_id: str | None, key: str) -> None:
    every = get_settings().idempotency_lease_seconds / 3
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(_renew, scope_id, tenant_id, key)
        except Exception:  # the lease runs out; a retry may then take over
            log.warning("could not renew the Idempotency-Key lease", exc_info=True)


# ----- around the request ----------------------------------------------------------------

def _storable(pending: Pending) -> dict[str, Any] | None:
    return service.response_to_keep(
        pending.status, bytes(pending.body), reached_endpoint=not pending.refused,
        whole_request=pending.body_done)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_key = dict(scope["headers"]).get(HEADER) if scope["type"] == "http" else None
        if raw_key is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY or not key.isprintable() or not key.isascii():
            await _respond(send, 400, f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII "
                                      "characters", "invalid_idempotency_key")
            return
        pending = Pending(key=key, digest=BodyDigest(scope))
        scope[SCOPE_KEY] = pending

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not pending.body_done:
                pending.digest.update(message.get("body", b""))
                pending.body_done = not message.get("more_body", False)
            return message

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                pending.status = message["status"]
            elif (message["type"] == "http.response.body"
                  and len(pending.body) <= service.MAX_KEPT_BODY):
                pending.body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, hashing_receive, capturing_send)
        except BaseException:
            await _settle(pending, None)
            raise
        await _settle(pending, _storable(pending))


async def _settle(pending: Pending, response: dict[str, Any] | None) -> None:
    """Store the response or release the key, whatever happens to the request meanwhile."""
    if pending.lease is not None:
        pending.lease.cancel()
    if pending.scope_id is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await run_in_threadpool(_finish, pending, response)
        except Exception:  # the lease will run out, and a retry will run again
            log.warning("could not settle the Idempotency-Key", exc_info=True)
    if pending.lease is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await pending.lease


async def _respond(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": "Idempotency-Key", "code": code}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
