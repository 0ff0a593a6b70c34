"""Per-key rate limiting: a token bucket in Redis (atomic Lua), ``rate`` requests a second
with bursts up to ``burst``. Redis is not the source of truth for anything, so when it is
unreachable requests are let through rather than refused."""

from __future__ import annotations

import logging
import math
import time
from functools import lru_cache

import redis

from core.kit.errors import RateLimited
from core.kit.settings import get_settings

log = logging.getLogger("loramill.ratelimit")

BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    url = get_settings().redis_url or "redis://127.0.0.1:6379/0"
    return redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=0.25)


def check(key_id: str) -> None:
    """Take one token for ``key_id`` or raise RateLimited with a Retry-After."""
    settings = get_settings()
    if settings.rate_limit_per_second <= 0:
        return
    try:
        wait = float(_client().eval(BUCKET, 1, f"ratelimit:{key_id}",
                                    settings.rate_limit_per_second,
                                    settings.rate_limit_burst, time.time()))
    except redis.RedisError as exc:
        log.warning("rate limiter unavailable (%s); letting the request through", exc)
        return
    if wait > 0:
        retry = max(1, math.ceil(wait))
        error = RateLimited(
            f"rate limit of {settings.rate_limit_per_second:g} requests/s per API key "
            f"(bursts of {settings.rate_limit_burst}) exceeded; retry in {retry}s",
            code="rate_limit_exceeded")
        error.headers = {"Retry-After": str(retry)}
        raise error
