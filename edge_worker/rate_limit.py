"""A per-client token bucket for the edge's token endpoint.

Pure and standard library only: the caller passes the time, so the same object works under
uvicorn (one per app) and on Cloudflare (one per isolate), and tests drive it with a fake clock.
The state lives in the adapter, never in a module global of the core.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate_per_minute`` requests per key per minute, with bursts up to ``burst`` (default:
    the per-minute rate). At most ``max_keys`` keys are tracked; the least recently seen are
    forgotten first (a forgotten key starts with a full bucket, which only errs towards letting
    a request through)."""

    def __init__(self, rate_per_minute: int, *, burst: int | None = None, max_keys: int = 10_000):
        if rate_per_minute < 1:
            raise ValueError(
                f"rate_per_minute={rate_per_minute!r} is invalid: use a whole number >= 1"
            )
        self.rate_per_s = rate_per_minute / 60.0
        self.burst = float(burst if burst is not None else rate_per_minute)
        if self.burst < 1:
            raise ValueError(f"burst={burst!r} is invalid: use a whole number >= 1")
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Spend one request for ``key`` at time ``now`` (seconds, any monotonic-enough origin).
        Returns 0.0 when allowed, otherwise the seconds until the next request would be."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate_per_s
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
