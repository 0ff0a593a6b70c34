"""HTTP with timeouts, retries and idempotency, set once for every call.

Retries: connection errors, 429, 5xx and a 409 saying the request's Idempotency-Key is
still in use (an earlier attempt runs, or ran and failed), with exponential backoff and
full jitter, honouring ``Retry-After``. Every POST gets one ``Idempotency-Key`` that all
its retries reuse, so a retry after a lost response never creates a second job or file.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from loramill.errors import APIConnectionError, from_response

RETRY_STATUSES = {429, 500, 502, 503, 504}
RETRY_CONFLICTS = {"idempotency_key_in_progress", "idempotency_key_released"}


class Transport:
    def __init__(self, base_url: str, api_key: str, *, timeout: float, max_retries: int,
                 backoff: float = 0.5, max_backoff: float = 20.0,
                 client: httpx.Client | None = None):
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.http = client or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}",
                     "User-Agent": "loramill-python/0.1.0"},
        )

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and (after := response.headers.get("retry-after")):
            try:
                return min(float(after), self.max_backoff)
            except ValueError:
                pass
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None,
                files: Callable[[], dict[str, Any]] | None = None,
                data: dict[str, Any] | None = None,
                idempotency_key: str | None = None) -> Any:
        """One logical call; ``files`` is a factory so each retry re-opens the file.
        A POST carries ``idempotency_key`` (default: a new one per call), reused by every
        retry of the call."""
        headers = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or f"lm-{uuid.uuid4()}"
        attempt = 0
        while True:
            response = None
            try:
                response = self.http.request(method, path, json=json, params=params,
                                             files=files() if files else None, data=data,
                                             headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise APIConnectionError(
                        f"cannot reach {self.http.base_url}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if not _retryable(response) or attempt >= self.max_retries:
                    raise from_response(response.status_code, _json(response))
            time.sleep(self._delay(attempt, response))
            attempt += 1

    def stream(self, path: str) -> Iterator[bytes]:
        with self.http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                raise from_response(response.status_code, _json(response))
            yield from response.iter_bytes()

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, fetching pages as needed."""
        after = None
        while True:
            page = self.request("GET", path, params={**params, **({"after": after}
                                                                  if after else {})})
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            after = page["data"][-1]["id"]


def _retryable(response: httpx.Response) -> bool:
    if response.status_code == 409:
        error = _json(response).get("error")
        return isinstance(error, dict) and error.get("code") in RETRY_CONFLICTS
    return response.status_code in RETRY_STATUSES


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": {"message": response.text[:500] or f"HTTP {response.status_code}"}}
