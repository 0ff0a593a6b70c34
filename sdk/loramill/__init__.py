"""loramill: the Python SDK of the loramill fine-tuning service."""

from loramill import datasets
from loramill.client import Client
from loramill.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ChecksumError,
    DownloadError,
    InvalidRequestError,
    JobCancelledError,
    JobFailedError,
    LoramillError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
)

__version__ = "0.1.0"
__all__ = [
    "APIConnectionError", "APIError", "AuthenticationError", "ChecksumError", "Client",
    "DownloadError",
    "InvalidRequestError", "JobCancelledError", "JobFailedError", "LoramillError",
    "NotFoundError", "PermissionDeniedError", "RateLimitError", "ServerError",
    "WaitTimeoutError", "datasets",
]
