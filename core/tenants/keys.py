"""API key material: ``lm-sk-`` plus 43 url-safe characters; only a sha256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "lm-sk-"
_KEY_RE = re.compile(r"^lm-sk-[A-Za-z0-9_-]{43}$")
READ = "read"
FILES_WRITE = "files:write"
JOBS_WRITE = "jobs:write"
KEYS_WRITE = "keys:write"
TENANT_SCOPES = (READ, FILES_WRITE, JOBS_WRITE, KEYS_WRITE)
ADMIN_SCOPE = "admin"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_well_formed(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]
