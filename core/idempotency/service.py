"""What an ``Idempotency-Key`` keeps (Stripe's rules; the HTTP side is api/idempotency.py):
only a response its endpoint produced, never a 401, 403, 409, 429 or 5xx (their retry may
well succeed), never a secret, for 24 hours."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

KEEP = timedelta(hours=24)
MAX_KEPT_BODY = 1024 * 1024
NEVER_KEPT = frozenset({401, 403, 409, 429})
ADMIN_SCOPE = "admin"  # operators' keys: a namespace of their own beside each tenant's
SECRET_NOTE = ("the secret was shown once, in the response that created this key, and is "
               "not stored; if it was lost, revoke this key and create another")


def scope_of(tenant_id: str | None) -> str:
    return tenant_id or ADMIN_SCOPE


def response_to_keep(status: int, body: bytes, *, reached_endpoint: bool,
                     whole_request: bool) -> dict[str, Any] | None:
    """The response to replay for retries, or None to release the key (so a retry runs).
    ``whole_request``: the body was read to its end, so the request's hash covers it (an
    upload refused before or while its body streamed was not: its answer is not kept, and
    a retry is simply refused again)."""
    if (not reached_endpoint or not whole_request or status >= 500 or status in NEVER_KEPT
            or len(body) > MAX_KEPT_BODY):
        return None
    try:
        document = json.loads(body or b"null")
    except ValueError:
        return None
    if isinstance(document, dict) and document.get("secret"):  # a new API key
        document = {**document, "secret": None, "note": SECRET_NOTE}
    return {"body": document}
