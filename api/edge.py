"""The API's edge: what every request must pass before any endpoint sees it.

- The URL's path and query hold no NUL character (PostgreSQL text cannot hold one).
- A JSON body is at most ``max_request_bytes`` (413 before it is parsed, chunked or not),
  and none of its strings (keys or values) holds a NUL or a lone UTF-16 surrogate, nor does
  it use the NaN/Infinity constants that Python's JSON reader allows and JSON does not.
  The streaming upload (/v1/files) is bounded by its own limits (api/uploads.py).

Each refusal is a 400 (or 413) in the usual envelope, naming the parameter.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.kit.settings import get_settings

UPLOAD_PATH = "/v1/files"
_SURROGATE = re.compile("[\ud800-\udfff]")


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def bad_characters(text: str) -> str | None:
    """What makes ``text`` unstorable, or None."""
    if "\x00" in text:
        return "a NUL character (\\u0000), which text fields cannot hold"
    found = _SURROGATE.search(text)
    if found:
        return (f"a lone UTF-16 surrogate (\\u{ord(found.group()):04x}), which is not "
                "valid Unicode")
    return None


def check_url(scope: Scope) -> None:
    if "\x00" in scope["path"]:
        raise Refused(400, "the URL path contains a NUL character (%00)",
                      "invalid_characters")
    if b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
        raise Refused(400, "the query string contains a NUL character (%00)",
                      "invalid_characters")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def check_json(body: bytes) -> None:
    """Refuse unstorable strings anywhere in a JSON document. A body that is not JSON at
    all is left to the endpoint, which says so."""
    try:
        document = json.loads(body, parse_constant=_no_constants)
    except ValueError as exc:
        if "is not allowed in JSON" in str(exc):
            raise Refused(400, f"request body is not valid JSON: {exc}",
                          "invalid_request") from exc
        return
    except RecursionError:
        return
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:  # iterative: deep documents cannot exhaust the interpreter's stack
        path, value = stack.pop()
        if isinstance(value, str):
            problem = bad_characters(value)
            if problem:
                raise Refused(400, f"invalid value for '{path}': it contains {problem}",
                              "invalid_characters", path or None)
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = bad_characters(key)
                if problem:
                    where = f"a key of '{path}'" if path else "a top-level key"
                    raise Refused(400, f"{where} contains {problem}", "invalid_characters",
                                  path or None)
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item)
                         for i, item in enumerate(value))


def _is_json(scope: Scope) -> bool:
    header: bytes = dict(scope["headers"]).get(b"content-type", b"")
    content_type = header.split(b";")[0].strip()
    return content_type == b"application/json" or content_type.endswith(b"+json")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_url(scope)
            if scope["method"] not in ("POST", "PUT", "PATCH") or scope["path"] == UPLOAD_PATH:
                await self.app(scope, receive, send)
                return
            body = await _read_capped(scope, receive, get_settings().max_request_bytes)
            if body is None:
                return  # the client went away
            if _is_json(scope):
                check_json(body)
        except Refused as refused:
            await respond(send, refused)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_capped(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole (small) body; the limit holds for chunked bodies too."""
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> Refused:
    return Refused(413, f"request body is larger than the limit of {limit} bytes",
                   "request_too_large")


async def respond(send: Send, refused: Refused) -> None:
    body = json.dumps({"error": {"message": refused.message, "type": "invalid_request_error",
                                 "param": refused.param, "code": refused.code}}).encode()
    await send({"type": "http.response.start", "status": refused.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
