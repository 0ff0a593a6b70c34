"""Object ids: an OpenAI-style prefix and a time-ordered random body.

The body is 48 bits of milliseconds and 80 random bits in lowercase Crockford base32, so
ids sort by creation time. Lists paginate on the id alone (``after`` = "older than").
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    body = (millis << 80) | secrets.randbits(80)
    return f"{prefix}-{_encode(body, 26)}"


FILE = "file"
JOB = "ftjob"
EVENT = "ftevent"
CHECKPOINT = "ftckpt"
TENANT = "tenant"
KEY = "key"
