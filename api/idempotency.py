"""``Idempotency-Key`` on every POST (design.md §5), as ASGI middleware.

The first request with a key reserves it (a row with no response yet), runs, and stores
its response. A retry with the same key and the same method, path and body gets that
response again (``Idempotent-Replayed: true``); with a different body, a 422. Requests that
arrive while the first is still running wait for it, so 50 concurrent identical POSTs make
one job. A 5xx is not stored: the key is released for a retry. Keys are per tenant and
expire after 24 hours. Bodies are hashed as they stream, so uploads are covered too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import keys
from core.db import admin_scope, tenant_scope
from core.models import IdempotencyKey
from core.models.base import utcnow
from core.repositories import tenants as tenant_repo

HEADER = b"idempotency-key"
TTL = timedelta(hours=24)
WAIT_SECONDS = 120.0
MAX_KEY = 255
MAX_STORED_BODY = 1024 * 1024
MAX_REPLAY_BODY = 8 * 1024 * 1024


def _tenant_for(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not keys.is_well_formed(token):
        return None
    with admin_scope() as session:  # the key names the tenant: looked up across tenants
        row = tenant_repo.find_key(session, keys.hash_key(token))
        return row.tenant_id if row is not None and row.revoked_at is None else None


def _reserve(tenant_id: str, key: str) -> bool:
    now = utcnow()
    with tenant_scope(tenant_id) as session:
        session.execute(delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
            IdempotencyKey.expires_at < now))
        inserted = session.execute(
            insert(IdempotencyKey)
            .values(tenant_id=tenant_id, key=key, request_hash="", created_at=now,
                    expires_at=now + TTL)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        ).first()
    return inserted is not None


def _load(tenant_id: str, key: str) -> IdempotencyKey | None:
    with tenant_scope(tenant_id) as session:
        return session.scalars(select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)).one_or_none()


def _store(tenant_id: str, key: str, request_hash: str, status: int,
           response: dict[str, Any] | None) -> None:
    with tenant_scope(tenant_id) as session:
        if response is None or status >= 500:
            session.execute(delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key))
            return
        row = session.get(IdempotencyKey, (tenant_id, key))
        if row is not None:
            row.request_hash, row.status_code, row.response = request_hash, status, response


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


def _error(status: int, message: str, code: str) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": "invalid_request_error",
                      "param": "Idempotency-Key", "code": code}}
    return status, json.dumps(body).encode()


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY:
            await _respond(send, *_error(400, f"Idempotency-Key must be 1 to {MAX_KEY} "
                                              "characters", "invalid_idempotency_key"))
            return
        tenant_id = await run_in_threadpool(
            _tenant_for, headers.get(b"authorization", b"").decode("latin-1"))
        if tenant_id is None:  # not a tenant: authentication answers as usual
            await self.app(scope, receive, send)
            return
        digest = BodyDigest(scope)
        if await run_in_threadpool(_reserve, tenant_id, key):
            await self._first(scope, receive, send, tenant_id, key, digest)
        else:
            await self._repeat(scope, receive, send, tenant_id, key, digest)

    async def _first(self, scope: Scope, receive: Receive, send: Send, tenant_id: str,
                     key: str, digest: Any) -> None:
        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                digest.update(message.get("body", b""))
            return message

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif (message["type"] == "http.response.body"
                  and len(captured["body"]) <= MAX_STORED_BODY):
                captured["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, hashing_receive, capturing_send)
        except BaseException:
            await run_in_threadpool(_store, tenant_id, key, "", 500, None)
            raise
        response = None
        if len(captured["body"]) <= MAX_STORED_BODY:
            try:
                response = {"body": json.loads(bytes(captured["body"]) or b"null")}
            except ValueError:
                response = None
        await run_in_threadpool(_store, tenant_id, key, digest.hexdigest(),
                                captured["status"], response)

    async def _repeat(self, scope: Scope, receive: Receive, send: Send, tenant_id: str,
                      key: str, digest: Any) -> None:
        kept: list[bytes] | None = []  # the body, while small enough to run it later
        size = 0
        while True:  # hash the retry's body without running it
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if kept is not None and size <= MAX_REPLAY_BODY:
                kept.append(chunk)
            else:
                kept = None
            if not message.get("more_body", False):
                break
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while True:
            row = await run_in_threadpool(_load, tenant_id, key)
            if row is None:  # the first attempt failed with a 5xx: this one may run
                if kept is None or not await run_in_threadpool(_reserve, tenant_id, key):
                    await _respond(send, *_error(409, "the first request with this "
                                                      "Idempotency-Key failed; retry it",
                                                 "idempotency_key_released"))
                    return
                body = b"".join(kept)
                fresh = BodyDigest(scope)

                async def replay(body: bytes = body) -> Message:
                    return {"type": "http.request", "body": body, "more_body": False}

                await self._first(scope, replay, send, tenant_id, key, fresh)
                return
            if row.status_code is not None:
                break
            if loop.time() > deadline:
                await _respond(send, *_error(409, "a request with this Idempotency-Key is "
                                                  "still in progress",
                                             "idempotency_key_in_progress"))
                return
            await asyncio.sleep(0.05)
        if row.request_hash != digest.hexdigest():
            await _respond(send, *_error(
                422, "this Idempotency-Key was already used with a different request "
                     "(method, path or body); use a new key for a new request",
                "idempotency_key_reused"))
            return
        body = json.dumps((row.response or {}).get("body")).encode()
        await _respond(send, row.status_code, body, replayed=True)


async def _respond(send: Send, status: int, body: bytes, *, replayed: bool = False) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if replayed:
        headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
