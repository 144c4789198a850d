"""The one Redis connection pool the coordination stores share, and its failure handling.

Timeouts are short (about a second) and nothing is retried: when Redis is down, each operation
fails fast with :class:`~callplane.coordination.errors.CoordinationUnavailable` instead of
holding a caller on a silent line. A retry could also apply a non-idempotent command twice (a
spend added twice), so deciding whether to retry is left to the caller. Connections are checked
when taken from the pool, so once Redis is back the same object works again.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from callplane.coordination.errors import CoordinationUnavailable, redact_url

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT_S", "KEY_GRACE_S", "RedisLink", "ms"]

DEFAULT_TIMEOUT_S = 1.0
DEFAULT_MAX_CONNECTIONS = 64

KEY_GRACE_S = 3600.0
"""Sorted sets of leases judged by callers' clocks also expire on Redis' clock, this long after
their latest lease, so a set whose every owner died goes away even if nobody purges it; the
margin absorbs clock differences between the containers and Redis."""


def ms(seconds: float) -> int:
    """Whole milliseconds for Redis' PX arguments, rounded up so a positive time never
    becomes 0 (which Redis refuses)."""
    return max(1, math.ceil(seconds * 1000))


def _reason(exc: BaseException) -> str:
    # Prefer the operating system's words ("Connection refused") over the client's wrapper.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return str(exc).strip() or type(exc).__name__


class RedisLink:
    """A client for ``url`` with key naming under ``prefix`` and error translation."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s={timeout_s!r} is invalid: use a positive number")
        self.url = redact_url(url)
        self.prefix = prefix
        self.timeout_s = timeout_s
        # A blocking pool: a burst of concurrent operations waits (up to the timeout) for a
        # free connection instead of failing with "too many connections".
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.client = redis.asyncio.Redis.from_pool(pool)

    def key(self, *parts: str) -> str:
        """``prefix`` followed by ``parts`` joined with ``:``."""
        return self.prefix + ":".join(parts)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn an unreachable or silent Redis into :class:`CoordinationUnavailable`."""
        try:
            yield
        except (redis.exceptions.TimeoutError, TimeoutError) as exc:
            raise CoordinationUnavailable(
                f"Redis at {self.url} did not answer within {self.timeout_s:g} s ({_reason(exc)})"
            ) from exc
        except (redis.exceptions.ConnectionError, OSError) as exc:
            raise CoordinationUnavailable(
                f"Redis at {self.url} is unreachable ({_reason(exc)})"
            ) from exc
