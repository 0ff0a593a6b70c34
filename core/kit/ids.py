"""Object ids: an OpenAI-style prefix and a time-ordered random body.

The body is 48 bits of milliseconds and 80 random bits in lowercase Crockford base32, so
ids sort by creation time. Lists paginate on the id alone (``after`` = "older than").
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


_lock = threading.Lock()
_last = [0, 0]  # millis, random part of the last id made by this process


def new_id(prefix: str) -> str:
    """Monotonic within a process: ids made in the same millisecond (two events written
    by one transaction) still sort in the order they were made."""
    with _lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _last[0]:
            millis, rand = _last[0], (_last[1] + 1) % (1 << 80)
        else:
            rand = secrets.randbits(79)  # headroom for increments
        _last[0], _last[1] = millis, rand
    return f"{prefix}-{_encode((millis << 80) | rand, 26)}"


FILE = "file"
JOB = "ftjob"
EVENT = "ftevent"
CHECKPOINT = "ftckpt"
TENANT = "tenant"
KEY = "key"
AUDIT = "audit"
WEBHOOK = "we"
DELIVERY = "msg"  # a delivery's id is the Standard Webhooks message id (webhook-id)
EVENT_OUT = "evt"  # the event a delivery carries (OpenAI's webhook payloads)
