"""Polling until something is true, for tests that watch processes, rooms and servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    predicate: Callable[[], object], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    """Return once ``predicate()`` is true; an AssertionError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


async def poll(
    fetch: Callable[[], Awaitable[T]],
    ok: Callable[[T], object],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
) -> T:
    """Await ``fetch()`` until ``ok`` accepts what it returns, and return that; an
    AssertionError naming ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {value}")
        await asyncio.sleep(interval)
