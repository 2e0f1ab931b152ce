"""Admission: a token bucket per API key, in this process.

Each key gets `rate_limit_per_second` requests a second with bursts of `rate_limit_burst`
(an org's `rate_limit` setting, which only the operator sets with `wajah orgs rate-limit`,
overrides both). Buckets live in each replica's memory: behind a load balancer spreading
requests over N replicas a key gets up to N times the rate. Only a key that proved its
secret is charged, so nobody can drain another caller's bucket by presenting its key id.

A refused request gets 429 `rate_limited` with `Retry-After` (whole seconds, at least 1)
and does no work: the check runs right after the key's, before the route's.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.errors import RateLimitedError
from app.runtime import Runtime
from app.services.orgs import org_settings
from app.services.principal import Principal


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: int

    @classmethod
    def from_setting(cls, value: Any, default: RateLimit) -> RateLimit:
        if not isinstance(value, dict):
            return default
        return cls(
            float(value.get("per_second", default.per_second)),
            int(value.get("burst", default.burst)),
        )


class TokenBuckets:
    """One bucket per key: `tokens` refill at `per_second` up to `burst`; a request takes
    one. Thread-safe (keys are checked on worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, limit: RateLimit, now: float | None = None) -> float:
        """0 when the request may go; else the seconds until a token is there."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - at) * limit.per_second)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / limit.per_second


class Admission:
    def __init__(self, default: RateLimit) -> None:
        self.default = default
        self.buckets = TokenBuckets()

    def admit(self, runtime: Runtime, principal: Principal, *, blocking: bool = True) -> None:
        """Charge the key one request; `RateLimitedError` when its bucket is empty.

        Not `blocking` (on the event loop): the org's settings are read from this replica's
        cache only (`Caller.cached_principal` comes here only when they are cached)."""
        if blocking:
            setting = org_settings(runtime, principal.org_id).get("rate_limit")
        else:
            cached = runtime.org_settings.get(principal.org_id)
            setting = None if cached is None else cached.get("rate_limit")
        limit = RateLimit.from_setting(setting, self.default)
        if limit.per_second <= 0:
            return
        wait = self.buckets.take(principal.key_id, limit)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise RateLimitedError(
                f"this API key may make {limit.per_second:g} requests a second (bursts of "
                f"{limit.burst}); retry after {retry_after} s",
                retry_after_s=retry_after,
            )
