"""A dictionary whose entries expire, for the in-process coordination state.

Entries are dropped lazily: a min-heap keyed by expiry is popped up to ``now`` on every access,
so memory is bounded by what is still alive, however long the process runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

__all__ = ["Expiring"]

# The heap keeps a stale entry for every overwrite until that entry's expiry passes; it is
# rebuilt when stale entries outnumber live ones by this factor (plus a little slack).
_COMPACT_FACTOR = 2
_COMPACT_SLACK = 64


class Expiring(Generic[V]):
    """``key -> value`` where each entry is gone once ``now >= expires_at``."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, V]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Entries stored, counting expired ones not yet pruned."""
        return len(self._items)

    def put(self, key: str, value: V, expires_at: float) -> None:
        """Store ``value`` under ``key`` until ``expires_at``, replacing any earlier entry."""
        self._items[key] = (expires_at, value)
        heapq.heappush(self._heap, (expires_at, key))
        if len(self._heap) > _COMPACT_FACTOR * len(self._items) + _COMPACT_SLACK:
            self._heap = [(expiry, k) for k, (expiry, _) in self._items.items()]
            heapq.heapify(self._heap)

    def get(self, key: str, now: float) -> V | None:
        """The value under ``key``, or None if there is none or it expired."""
        self.prune(now)
        item = self._items.get(key)
        return None if item is None else item[1]

    def expires_at(self, key: str, now: float) -> float | None:
        """When ``key``'s entry expires, or None if there is no live entry."""
        self.prune(now)
        item = self._items.get(key)
        return None if item is None else item[0]

    def pop(self, key: str) -> V | None:
        """Remove ``key``'s entry and return its value (None if there was none)."""
        item = self._items.pop(key, None)
        return None if item is None else item[1]

    def items(self, now: float) -> Iterator[tuple[str, V]]:
        """The live entries, in no particular order."""
        self.prune(now)
        for key, (_, value) in list(self._items.items()):
            yield key, value

    def evict_soonest(self) -> None:
        """Drop the entry that would expire first (to make room under a size bound)."""
        while self._heap:
            expiry, key = heapq.heappop(self._heap)
            item = self._items.get(key)
            if item is not None and item[0] == expiry:
                del self._items[key]
                return

    def prune(self, now: float) -> None:
        """Drop every entry that has expired by ``now``."""
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            item = self._items.get(key)
            if item is not None and item[0] <= now:
                del self._items[key]
