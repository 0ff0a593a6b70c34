"""Typed exceptions. API errors carry the server's ``message``, ``param`` and ``code``."""

from __future__ import annotations

from typing import Any


class LoramillError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(LoramillError):
    """The server could not be reached (after retries)."""


class APIError(LoramillError):
    def __init__(self, message: str, *, status: int, param: str | None = None,
                 code: str | None = None, body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.body = body

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status} {self.code or 'error'}: {self.message}{where}"


class InvalidRequestError(APIError):
    """400, 409, 413, 415, 422: the request was wrong; ``param`` says where."""


class AuthenticationError(APIError):
    """401: missing, malformed, unknown or revoked API key."""


class PermissionDeniedError(APIError):
    """403."""


class NotFoundError(APIError):
    """404: no such object in your account."""


class RateLimitError(APIError):
    """429: a rate limit or a quota (the message names it)."""


class ServerError(APIError):
    """5xx after retries."""


class JobFailedError(LoramillError):
    def __init__(self, job: Any):
        error = job.error or {}
        super().__init__(f"job {job.id} failed: {error.get('code')}: {error.get('message')}")
        self.job = job


class JobCancelledError(LoramillError):
    def __init__(self, job: Any):
        super().__init__(f"job {job.id} was cancelled")
        self.job = job


class WaitTimeoutError(LoramillError):
    def __init__(self, job: Any, seconds: float):
        super().__init__(f"job {job.id} is still {job.status} after {seconds:.0f}s")
        self.job = job


class DownloadError(LoramillError):
    """A file could not be downloaded: its presigned URL was refused or expired, or the
    store could not be reached. Nothing is left behind for that file."""


class ChecksumError(DownloadError):
    """A downloaded file does not match the sha256 in the adapter's manifest."""


def from_response(status: int, body: Any) -> APIError:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = error.get("message") or f"HTTP {status}"
    kwargs = {"status": status, "param": error.get("param"), "code": error.get("code"),
              "body": body}
    cls: type[APIError]
    if status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = ServerError
    else:
        cls = InvalidRequestError
    return cls(message, **kwargs)
