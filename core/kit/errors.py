"""Domain errors. Each carries its HTTP status and OpenAI-style ``type``/``code``;
api/errors.py renders them all the same way."""

from __future__ import annotations


class LoramillError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] | None = None
        if code is not None:
            self.code = code


class InvalidRequest(LoramillError):
    status_code = 400


class AuthenticationFailed(LoramillError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(LoramillError):
    status_code = 403
    type = "permission_error"
    code = "insufficient_permissions"


class NotFound(LoramillError):
    status_code = 404
    code = "not_found"


class Conflict(LoramillError):
    status_code = 409
    code = "conflict"


class Unprocessable(LoramillError):
    status_code = 422


class PayloadTooLarge(LoramillError):
    status_code = 413
    code = "file_too_large"


class UnsupportedMediaType(LoramillError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimited(LoramillError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(LoramillError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"
