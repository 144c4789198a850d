"""An ordered write buffer with its own thread: the calls never wait for the database.

A call hands its writes to :meth:`OrderedWriter.put`, which only appends to a queue; one thread
applies the queue in order, in batches of one transaction each, and removes a batch only once
it is committed. While the database is down the batch is retried with exponential backoff
(capped), the queue keeps growing up to a bound, and when the bound is reached the oldest
*droppable* writes go first (for call records: progress, never the start or the end of a call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from callplane.records.engine import brief

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_FIRST_S: Final = 0.05
BATCH_MAX: Final = 500
COMMIT_GAP_S: Final = 0.5
"""The least time between two of the writer's transactions (unless someone flushes): a
quiet container commits a line at once, a busy one commits the lines of all its calls
together, at most twice a second, instead of paying a transaction per line. A container
killed mid-call loses at most the lines of its last half second."""


class OrderedWriter(Generic[T]):
    """Applies the items given to :meth:`put` in order, on a thread of its own.

    ``apply(items)`` writes a batch in one transaction and raises if it did not commit;
    ``transient(exc)`` says whether an error means "the database is unreachable, try again"
    (the batch is retried, for as long as it takes) or "this write is wrong" (the batch is
    retried one item at a time and the failing item is logged and discarded, so one bad write
    cannot hold up the others). ``apply`` must be idempotent: a commit whose reply was lost is
    retried. ``tick()``, if given, runs on the same thread every ``tick_s`` seconds while the
    database answers (heartbeats, housekeeping).
    """

    def __init__(
        self,
        apply: Callable[[list[T]], None],
        *,
        droppable: Callable[[T], bool],
        transient: Callable[[BaseException], bool],
        where: str,
        tick: Callable[[], None] | None = None,
        tick_s: float = 5.0,
        max_pending: int = 20_000,
        retry_max_s: float = 2.0,
        batch_max: int = BATCH_MAX,
        commit_gap_s: float = COMMIT_GAP_S,
        name: str = "records-writer",
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._apply = apply
        self._droppable = droppable
        self._transient = transient
        self._where = where
        self._tick_fn = tick
        self._tick_s = tick_s
        self._max_pending = max_pending
        self._retry_max_s = retry_max_s
        self._batch_max = batch_max
        self._commit_gap_s = commit_gap_s
        self._last_commit = float("-inf")  # time.monotonic() of the last transaction
        self._cond = threading.Condition()
        self._sleeping = False  # the writer waits for a first item (puts then wake it)
        self._queue: deque[tuple[int, T]] = deque()  # (number, item), oldest first
        self._in_flight = 0  # the first items of the queue, being written: never dropped
        self._last_number = 0
        self._waiters: list[tuple[int, concurrent.futures.Future[bool]]] = []
        self._dropped = 0
        self._dropped_lately = 0  # since the last time drops were reported
        self._down_since: float | None = None
        self._up_since = time.monotonic()
        self._closed = False  # no more puts
        self._warned_closed = False
        self._stopping = False
        self._abandon = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- the callers' side: never blocks on the database

    def put(self, item: T) -> None:
        """Queue ``item`` behind every item put before it."""
        with self._cond:
            if self._closed:
                if not self._warned_closed:
                    self._warned_closed = True
                    log.warning("call records: writes after close are ignored (%s)", self._where)
                return
            if len(self._queue) >= self._max_pending and not self._make_room(item):
                return
            self._last_number += 1
            self._queue.append((self._last_number, item))
            # Wake the writer only when it sleeps on an empty queue or a batch is full: waking
            # a lingering writer at every line would make the two threads trade the GIL for
            # nothing, on the thread that carries the calls' audio.
            if self._sleeping or len(self._queue) >= self._batch_max:
                self._cond.notify()

    @property
    def pending(self) -> int:
        """Items not yet committed (including a batch being written)."""
        with self._cond:
            return len(self._queue)

    @property
    def dropped(self) -> int:
        """Items given up on: dropped because the queue was full, or refused by the database."""
        with self._cond:
            return self._dropped

    @property
    def healthy(self) -> bool:
        """False from the first failed write until the next one that commits."""
        with self._cond:
            return self._down_since is None

    @property
    def healthy_for_s(self) -> float:
        """Seconds since the database last came back (or since the start); 0 while failing."""
        with self._cond:
            return 0.0 if self._down_since is not None else time.monotonic() - self._up_since

    def wait(self, timeout_s: float) -> bool:
        """Block until every item put so far is committed (or given up on); False on timeout."""
        future = self._waiter()
        if future is None:
            return True
        try:
            return future.result(timeout_s)
        except TimeoutError:
            self._forget(future)
            return False

    async def wait_async(self, timeout_s: float) -> bool:
        """:meth:`wait` for async code: the event loop keeps running meanwhile."""
        future = self._waiter()
        if future is None:
            return True
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            self._forget(future)
            return False

    def close(self, timeout_s: float) -> bool:
        """Refuse new items, write what is queued for up to ``timeout_s`` seconds, then stop
        the thread. Returns whether everything queued was written."""
        with self._cond:
            self._closed = True
        flushed = self.wait(timeout_s)
        with self._cond:
            self._stopping = self._abandon = True
            left = len(self._queue)
            self._cond.notify_all()
        self._stop.set()
        self._thread.join(timeout=max(timeout_s, 1.0))
        if left:
            log.error(
                "call records: %d writes were never stored: %s did not take them before close",
                left,
                self._where,
            )
        return flushed

    # ---- bookkeeping, under self._cond

    def _make_room(self, item: T) -> bool:
        """The queue is full: drop the oldest droppable item. Returns whether ``item`` should
        still be queued (an essential item goes over the bound rather than be lost)."""
        waiting = itertools.islice(self._queue, self._in_flight, None)
        for index, (_, queued) in enumerate(waiting, start=self._in_flight):
            if self._droppable(queued):
                del self._queue[index]
                self._count_drop()
                self._resolve_waiters()
                return True
        if self._droppable(item):
            self._count_drop()
            return False
        return True

    def _count_drop(self) -> None:
        self._dropped += 1
        self._dropped_lately += 1
        if self._dropped_lately == 1:
            log.warning(
                "call records: %d writes wait for %s (max_pending); dropping the oldest "
                "progress writes until it catches up",
                len(self._queue),
                self._where,
            )

    def _waiter(self) -> concurrent.futures.Future[bool] | None:
        with self._cond:
            if self._is_written(self._last_number):
                return None
            future: concurrent.futures.Future[bool] = concurrent.futures.Future()
            self._waiters.append((self._last_number, future))
            self._cond.notify()  # a lingering writer writes now
            return future

    def _forget(self, future: concurrent.futures.Future[bool]) -> None:
        with self._cond:
            self._waiters = [(n, f) for n, f in self._waiters if f is not future]

    def _is_written(self, number: int) -> bool:
        return not self._queue or self._queue[0][0] > number

    def _resolve_waiters(self, result: bool = True, everyone: bool = False) -> None:
        keep: list[tuple[int, concurrent.futures.Future[bool]]] = []
        for number, future in self._waiters:
            if everyone or self._is_written(number):
                # A waiter may time out at this very moment: its future is then cancelled.
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(result)
            else:
                keep.append((number, future))
        self._waiters = keep

    def _take(self, limit: int) -> list[T]:
        batch = [item for _, item in itertools.islice(self._queue, limit)]
        self._in_flight = len(batch)
        return batch

    # ---- the writer thread

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        wait_s = next_tick - time.monotonic() if self._tick_fn else None
                        if wait_s is not None and wait_s <= 0:
                            break
                        self._sleeping = True
                        try:
                            self._cond.wait(wait_s)
                        finally:
                            self._sleeping = False
                    if self._stopping and (self._abandon or not self._queue):
                        return
                    self._linger()
                    batch = self._take(self._batch_max)
                if self._tick_fn is not None and time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + self._tick_s
                if batch:
                    self._write(batch)
        finally:
            with self._cond:
                self._resolve_waiters(False, everyone=True)

    def _linger(self) -> None:
        """Wait until ``commit_gap_s`` has passed since the last transaction (called holding
        the lock, queue not empty), so that what comes meanwhile joins this batch. A flush,
        a stop or a full batch ends the wait at once."""
        deadline = self._last_commit + self._commit_gap_s
        while not (self._stopping or self._waiters or len(self._queue) >= self._batch_max):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _write(self, batch: list[T]) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                self._last_commit = time.monotonic()
                self._apply(batch)
            except Exception as exc:
                if not self._transient(exc):
                    self._write_singly(batch, exc)
                    return
                self._failed(exc)
                self._stop.wait(delay)  # not woken by puts: the backoff holds under load
                delay = min(delay * 2, self._retry_max_s)
                with self._cond:
                    if self._abandon:
                        self._in_flight = 0
                        return
                    # Until the database answers, retry with the oldest write alone: the
                    # others stay droppable, so a full queue gives up its oldest progress.
                    batch = self._take(1)
                continue
            self._written(len(batch))
            return

    def _write_singly(self, batch: list[T], first: Exception) -> None:
        log.warning(
            "call records: %s refused a batch of %d writes (%r); writing them one by one",
            self._where,
            len(batch),
            first,
        )
        for item in batch:
            try:
                self._apply([item])
            except Exception as exc:
                if self._transient(exc):
                    self._failed(exc)
                    with self._cond:
                        self._in_flight = 0  # the rest is taken again, in order
                    return
                log.error(
                    "call records: %s refused a write; it is discarded: %r",
                    self._where,
                    exc,
                    exc_info=exc,
                )
                self._written(1, refused=True)
            else:
                self._written(1)

    def _written(self, count: int, *, refused: bool = False) -> None:
        with self._cond:
            for _ in range(count):
                self._queue.popleft()
            self._in_flight = max(0, self._in_flight - count)
            if refused:
                self._dropped += 1
            if self._down_since is not None:
                self._recovered(count + len(self._queue))
            elif self._dropped_lately and not self._queue:
                log.warning(
                    "call records: %d progress writes were dropped while %s lagged behind",
                    self._dropped_lately,
                    self._where,
                )
                self._dropped_lately = 0
            self._resolve_waiters()

    def _failed(self, exc: BaseException) -> None:
        with self._cond:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "call records: database %s is failing (%s); %d writes wait in order and "
                    "are retried until it is back",
                    self._where,
                    brief(exc),
                    len(self._queue),
                )

    def _recovered(self, replayed: int) -> None:
        assert self._down_since is not None
        self._up_since = time.monotonic()
        down_s = self._up_since - self._down_since
        self._down_since = None
        dropped, self._dropped_lately = self._dropped_lately, 0
        log.warning(
            "call records: database %s is back after %.1f s; replaying %d queued writes%s",
            self._where,
            down_s,
            replayed,
            f" ({dropped} progress writes were dropped while it was down)" if dropped else "",
        )

    def _tick(self) -> None:
        assert self._tick_fn is not None
        try:
            self._tick_fn()
        except Exception as exc:
            if self._transient(exc):
                self._failed(exc)
            else:
                log.exception("call records: periodic upkeep failed on %s", self._where)
            return
        with self._cond:
            if self._down_since is not None and not self._queue:
                self._recovered(0)
