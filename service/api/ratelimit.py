"""Per-key rate limits: a token bucket for each API key, refilled at L2O_RATE_LIMIT_PER_S up to
L2O_RATE_LIMIT_BURST tokens. A request takes one token; with none left it is refused with
429 rate_limited and a Retry-After header saying when a token will be there.

The buckets live where the sessions do: in the process with the memory store, in Redis with the Redis
store, so every API process behind one Redis shares a key's budget (the clock is Redis's own, so the
processes' clocks need not agree). A Redis outage lets requests through rather than failing them here:
the routes that need Redis answer 503 themselves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import redis
from fastapi import FastAPI

from service.config import Settings
from service.errors import RateLimited

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def acquire(self, key: str) -> float:
        """Take one token from `key`'s bucket: 0 when taken, else the seconds until one is there."""
        ...

    def close(self) -> None: ...


class MemoryRateLimiter:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._lock = threading.Lock()  # key checks run on the threadpool

    def acquire(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def close(self) -> None:
        self._buckets.clear()


# KEYS[1] the bucket; ARGV rate, burst. Returns the wait as a string (Redis truncates Lua numbers to integers).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    def __init__(self, client: redis.Redis, prefix: str, rate: float, burst: int) -> None:
        self.client, self.prefix, self.rate, self.burst = client, prefix, rate, burst
        self._take = client.register_script(TAKE)

    @classmethod
    def from_url(cls, url: str, prefix: str, rate: float, burst: int) -> RedisRateLimiter:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), prefix, rate, burst)

    def acquire(self, key: str) -> float:
        try:
            return float(self._take(keys=[f"{self.prefix}rate:{key}"], args=[repr(self.rate), self.burst]))
        except redis.RedisError as exc:
            log.warning("rate limit not checked, Redis is unavailable: %s", exc)
            return 0.0

    def close(self) -> None:
        self.client.close()


def open_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter the settings ask for; None when L2O_RATE_LIMIT_PER_S is 0 (no limit)."""
    if settings.rate_limit_per_s <= 0:
        return None
    rate = settings.rate_limit_per_s
    burst = settings.rate_limit_burst or max(1, math.ceil(rate))
    if settings.session_store.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter.from_url(settings.session_store, settings.session_key_prefix, rate, burst)
    return MemoryRateLimiter(rate, burst)


def check_rate(limiter: RateLimiter | None, key_id: str) -> None:
    """Spend one of the key's tokens, or raise 429 saying when to come back."""
    if limiter is None:
        return
    wait = limiter.acquire(key_id)
    if wait > 0:
        raise RateLimited(f"this API key is over its rate limit; retry in {wait:.2f} s "
                          "(L2O_RATE_LIMIT_PER_S, L2O_RATE_LIMIT_BURST)",
                          retry_after=wait, detail={"retry_after_s": round(wait, 3)})


@asynccontextmanager
async def rate_limit_component(app: FastAPI) -> AsyncIterator[None]:
    limiter = open_rate_limiter(app.state.settings)
    app.state.rate_limiter = limiter
    try:
        yield
    finally:
        app.state.rate_limiter = None
        if limiter is not None:
            limiter.close()
