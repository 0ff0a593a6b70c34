"""``X-Request-ID``: taken from the request when it is sane, else made here; echoed on
the response and attached to every log line of the request, with one access line each
and one sample of the latency histogram (by route template, so ids do not make series).

This outermost middleware is also the last resort for an unexpected exception: it logs it
once (a JSON line with the request id), answers 500 in the error envelope and does not
re-raise, so the server neither prints a plain traceback nor drops the keep-alive
connection."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import internal_error
from core.kit import logs, metrics

log = logging.getLogger("loramill.access")
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SANE.match(given) else f"req-{uuid.uuid4().hex}"
        token = logs.start(request_id=rid)
        status = 500
        answered = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if answered:
                raise  # half a response is out: only closing the connection ends it
            await internal_error()(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_LATENCY.labels(scope["method"], route, str(status)).observe(elapsed)
            log.info("%s %s %s", scope["method"], scope["path"], status, extra={
                "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round(elapsed * 1000, 1)})
            logs.end(token)
