"""RecordStore: call records in SQLite or PostgreSQL, written while the call is on.

A call's row is written when it starts (``live``), its transcript lines, tool calls,
interruptions and keypad digits are appended as they happen, and the row is closed when the
call ends. So a call whose container dies is not lost: the store of every container refreshes
a heartbeat on its live calls, and any store closes the calls whose heartbeat stopped
(``status`` ``lost``, ``end_reason`` ``container_lost``) with everything written up to then.

A record is never replaced. The store that wrote a call's row first owns it: another store's
writes for the same CallSid (a second stream for the call, however it got through) leave the
row and its events as they are, and an ended row is never reopened or rewritten, only appended
to by its own store.

The calls never wait for the database. The write methods snapshot what changed on the caller's
thread and queue it; one writer thread per store commits the queue in order (see
:mod:`callplane.records.writer`), and keeps it through an outage of the database. Reads are
blocking; from async code use their ``_async`` twins, which run in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from callplane.records.engine import (
    WRITE,
    brief,
    database_url,
    describe,
    insert,
    is_transient,
    make_engine,
)
from callplane.records.migrate import upgrade
from callplane.records.model import CallRecord
from callplane.records.schema import LOST_REASON, EventKind, Status, call_events, calls
from callplane.records.writer import OrderedWriter

log = logging.getLogger(__name__)

SUMMARY_KEYS: Final = (
    "usage",
    "reconnects",
    "renewals",
    "transferred_to",
    "answered_by",
    "voicemail_left",
    "context",
    "cost_usd",
    "dropped_frames",
)
"""What a record holds besides its columns and its lists: the ``summary`` JSON of its row."""

FINISHED_REMEMBERED: Final = 10_000
"""How many finished calls a store remembers what it wrote of, so that a late write for one
(a listener firing after the end, a second save) appends only what is new."""

_BLANK: Final = CallRecord(call_sid="").to_json()


@dataclass
class _Written:
    """How much of one call this store has queued so far: the next event number and, per
    list of the record, how many items (tool calls: which positions)."""

    seq: int = 0
    transcript: int = 0
    tool_calls: set[int] = field(default_factory=set)
    interruptions: int = 0
    dtmf: int = 0
    outages: int = 0


@dataclass(frozen=True)
class _Write:
    """One queued write: the call's row as of the snapshot, and the events new since the
    previous snapshot (already numbered and serialized)."""

    kind: Literal["started", "progress", "finished"]
    call_sid: str
    row: dict[str, Any] | None  # None: the row is fresh enough, only events to append
    events: list[dict[str, Any]]


class RecordStore:
    """Call records in a SQL database, written as the call goes, read by any container.

    ``url`` is a SQLAlchemy URL: ``sqlite:///PATH`` for one process (the default of the local
    stack), ``postgresql+psycopg://USER@HOST:PORT/DB`` for several. A plain path still means a
    SQLite file. The schema is migrated at construction (safe with replicas starting at once).

    ``owner`` names this store in the rows it writes (default ``hostname:pid``). Every
    ``heartbeat_s`` seconds the store refreshes the heartbeat of its live calls and closes any
    call, of any owner, whose heartbeat is older than ``lost_after_s`` (:meth:`reap_lost`).
    While the database is unreachable, up to ``max_pending`` writes wait in order and are
    retried with a backoff of at most ``retry_max_s`` seconds.

    A call that a reaper closed as lost keeps that status against late progress writes of its
    owner, but not against the owner's :meth:`call_finished`: the real end is more accurate than
    the reaper's guess, so it overwrites ``container_lost`` with the true end, duration and
    cost (and status ``ended``). Nothing else changes a closed row: an ended call keeps its end,
    and a call whose row another owner wrote is left to that owner (this store then drops its
    own writes for the call and logs it once).
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        owner: str | None = None,
        max_pending: int = 20_000,
        heartbeat_s: float = 5.0,
        lost_after_s: float = 30.0,
        retry_max_s: float = 2.0,
    ) -> None:
        self.url = database_url(url)
        self.owner = owner if owner is not None else f"{socket.gethostname()}:{os.getpid()}"
        self.heartbeat_s = heartbeat_s
        self.lost_after_s = lost_after_s
        self._where = describe(self.url)
        self._engine = make_engine(self.url)
        self._lock = threading.Lock()  # the per-call bookkeeping below
        self._live: dict[str, _Written] = {}
        self._finished: OrderedDict[str, _Written] = OrderedDict()
        # Calls whose row another owner wrote: this store's writes for them are dropped. Read
        # and written on the writer thread only; the newest FINISHED_REMEMBERED are kept.
        self._foreign: OrderedDict[str, None] = OrderedDict()
        self._migrated = False
        try:
            upgrade(self._engine)
            self._migrated = True
        except Exception as exc:
            if not is_transient(exc):
                self._engine.dispose()
                raise
            # The database is down at start: the writer migrates before its first write.
            log.warning(
                "call records: cannot migrate %s yet (%s); writes wait until it answers",
                self._where,
                brief(exc),
            )
        self._writer: OrderedWriter[_Write] = OrderedWriter(
            self._apply,
            droppable=lambda w: w.kind == "progress",
            transient=is_transient,
            where=self._where,
            tick=self._upkeep,
            tick_s=heartbeat_s,
            max_pending=max_pending,
            retry_max_s=retry_max_s,
        )

    # ---- writes: snapshot on the caller's thread, commit on the writer's

    def call_started(self, record: CallRecord) -> None:
        """Write the call's row as ``live``, owned by this store (which heart-beats it from
        now on). Never blocks, never raises."""
        self._queue("started", record)

    def call_progress(self, record: CallRecord) -> None:
        """Append what is new in ``record`` since this store last wrote it: transcript lines,
        tool calls that have their output (each once), interruptions, keypad digits; and
        refresh the row. Cheap enough for every transcript line
        (``record.watch(store.call_progress)``). Never blocks, never raises."""
        self._queue("progress", record)

    def call_finished(self, record: CallRecord) -> None:
        """Append what is new (tool calls still without output too, as they are) and close
        the row with the record's end, duration, reason and cost. Never blocks, never raises."""
        self._queue("finished", record)

    def save(self, record: CallRecord) -> None:
        """Write the whole record now, blocking until it is committed (tools, tests)."""
        self.call_started(record)
        self.call_finished(record)
        if not self.flush_sync():
            log.warning("call records: call %s not stored yet (%s)", record.call_sid, self._where)

    async def save_async(self, record: CallRecord) -> None:
        """Write the whole record and wait until it is committed, without blocking the loop."""
        self.call_started(record)
        self.call_finished(record)
        if not await self.flush():
            log.warning("call records: call %s not stored yet (%s)", record.call_sid, self._where)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """True once every write queued so far is committed; False after ``timeout_s``."""
        return await self._writer.wait_async(timeout_s)

    def flush_sync(self, timeout_s: float = 10.0) -> bool:
        """:meth:`flush`, blocking."""
        return self._writer.wait(timeout_s)

    @property
    def pending(self) -> int:
        """Writes queued and not yet committed."""
        return self._writer.pending

    @property
    def dropped(self) -> int:
        """Progress writes dropped because the queue was full (or refused by the database)."""
        return self._writer.dropped

    @property
    def healthy(self) -> bool:
        """False while the database is failing (writes then wait in the queue)."""
        return self._writer.healthy

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout_s`` seconds), stop the writer thread and
        close the database connections."""
        self._writer.close(timeout_s)
        self._engine.dispose()

    def _queue(self, kind: Literal["started", "progress", "finished"], record: CallRecord) -> None:
        try:
            write = self._snapshot(kind, record)
        except Exception:  # a record that cannot be read must not break its call
            log.exception("call records: cannot snapshot call %s", record.call_sid)
            return
        self._writer.put(write)

    def _snapshot(
        self, kind: Literal["started", "progress", "finished"], record: CallRecord
    ) -> _Write:
        sid = record.call_sid
        with self._lock:
            was_finished = sid in self._finished
            written = self._live.get(sid) or self._finished.pop(sid, None) or _Written()
            if kind == "finished" or (kind == "progress" and was_finished):
                # A late progress write after the end leaves the call finished: no heartbeat.
                self._live.pop(sid, None)
                self._finished[sid] = written
                while len(self._finished) > FINISHED_REMEMBERED:
                    self._finished.popitem(last=False)
            else:
                self._live[sid] = written
            events = _new_events(record, written, final=kind == "finished")
            # A progress write only appends events (one multi-row insert per batch, whatever
            # the number of calls); the row is written at the start and the end. A call whose
            # container dies keeps its start's row: what was said, not its usage or cost.
        return _Write(kind, sid, None if kind == "progress" else _row(record), events)

    # ---- the writer thread

    def _apply(self, writes: builtins.list[_Write]) -> None:
        now = time.time()
        if not self._migrated:
            upgrade(self._engine)
            self._migrated = True
        last_of_call = {w.call_sid: i for i, w in enumerate(writes) if w.row is not None}
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            with connection.begin():
                unwritten: builtins.list[str] = []
                for i, write in enumerate(writes):
                    # A later write in this batch sets the same row again: only the end counts.
                    if (
                        write.row is None
                        or write.call_sid in self._foreign
                        or (write.kind != "finished" and last_of_call[write.call_sid] != i)
                    ):
                        continue
                    if connection.execute(self._row_statement(connection, write, now)).first():
                        continue
                    unwritten.append(write.call_sid)
                # A row left as it was is ours (ended: a late write appends only its events)
                # or another owner's: then the call is not ours to write at all.
                foreign = self._owners_other_than_us(connection, unwritten)
                events = [
                    event
                    for write in writes
                    if write.call_sid not in foreign and write.call_sid not in self._foreign
                    for event in write.events
                ]
                if events:
                    connection.execute(
                        insert(connection, call_events).on_conflict_do_nothing(), events
                    )
        for sid, owner in foreign.items():
            self._foreign[sid] = None
            while len(self._foreign) > FINISHED_REMEMBERED:
                self._foreign.popitem(last=False)
            log.warning(
                "call records: call %s was first written by %s, not by this store (%s): its "
                "record is left as it is and this store's writes for it are dropped",
                sid,
                owner,
                self.owner,
            )

    def _owners_other_than_us(
        self, connection: Connection, call_sids: builtins.list[str]
    ) -> dict[str, str]:
        """CallSid -> owner, for the calls among ``call_sids`` whose row another store owns."""
        if not call_sids:
            return {}
        rows = connection.execute(
            sa.select(calls.c.call_sid, calls.c.owner).where(
                calls.c.call_sid.in_(call_sids), calls.c.owner != self.owner
            )
        )
        return {sid: owner for sid, owner in rows}

    def _row_statement(self, connection: Connection, write: _Write, now: float) -> Any:
        """The upsert of ``write``'s row; it returns the CallSid if it inserted or changed the
        row, nothing if the row was left as it was (another owner's, or already closed)."""
        assert write.row is not None
        stmt = insert(connection, calls)
        ours = calls.c.owner == self.owner
        if write.kind == "finished":
            values = {**write.row, "status": "ended", "owner": self.owner, "heartbeat_at": now}
            stmt = stmt.values(values)
            # The real end wins over a reaper's "container_lost"; an ended row keeps its end,
            # and another owner's row is never ours to close.
            return stmt.on_conflict_do_update(
                index_elements=[calls.c.call_sid],
                set_={k: stmt.excluded[k] for k in values if k != "call_sid"},
                where=sa.and_(ours, calls.c.status.in_(("live", "lost"))),
            ).returning(calls.c.call_sid)
        live = {"ended_at": None, "duration_s": 0.0, "end_reason": "", "status": "live"}
        values = {**write.row, **live, "owner": self.owner, "heartbeat_at": now}
        stmt = stmt.values(values)
        refreshed = [*(k for k in write.row if k not in live and k != "call_sid"), "heartbeat_at"]
        # Never reopens a call (a finished or reaped row keeps its end), and never takes over
        # a live call another store writes.
        return stmt.on_conflict_do_update(
            index_elements=[calls.c.call_sid],
            set_={k: stmt.excluded[k] for k in refreshed},
            where=sa.and_(ours, calls.c.status == "live"),
        ).returning(calls.c.call_sid)

    def _upkeep(self) -> None:
        """Every ``heartbeat_s``: refresh this store's live calls (one statement), then close
        the calls that nobody refreshed for ``lost_after_s``.

        A store reaps only once it has reached the database for ``lost_after_s`` in a row:
        after an outage every heartbeat is old, and the other containers need that long to
        refresh theirs before their live calls can be told from lost ones."""
        if not self._migrated:
            upgrade(self._engine)
            self._migrated = True
        now = time.time()
        with self._lock:
            live = list(self._live)
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            with connection.begin():
                if live:
                    connection.execute(
                        calls.update()
                        .where(
                            calls.c.call_sid.in_(live),
                            calls.c.owner == self.owner,
                            calls.c.status == "live",
                        )
                        .values(heartbeat_at=now)
                    )
                settled = self._writer.healthy_for_s >= self.lost_after_s
                lost = self._reap(connection, now) if settled else []
        if lost:
            log.warning(
                "call records: %d calls lost their container (no heartbeat for %g s): %s",
                len(lost),
                self.lost_after_s,
                ", ".join(lost),
            )

    # ---- lost calls

    def reap_lost(self, now: float | None = None) -> builtins.list[str]:
        """Close every live call, of any owner, whose heartbeat is older than
        ``lost_after_s``: status ``lost``, end reason ``container_lost``, ended at its last
        heartbeat. One atomic UPDATE, so stores reaping at once close each call once. Returns
        the call SIDs this call closed. Blocking; stores also do this every ``heartbeat_s``
        (once they have reached the database for ``lost_after_s`` in a row)."""
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            with connection.begin():
                return self._reap(connection, time.time() if now is None else now)

    def _reap(self, connection: Connection, now: float) -> builtins.list[str]:
        duration = sa.func.round(sa.cast(calls.c.heartbeat_at - calls.c.started_at, sa.Numeric), 3)
        stmt = (
            calls.update()
            .where(calls.c.status == "live", calls.c.heartbeat_at < now - self.lost_after_s)
            .values(
                status="lost",
                end_reason=LOST_REASON,
                ended_at=calls.c.heartbeat_at,
                duration_s=sa.cast(duration, sa.Double),
            )
            .returning(calls.c.call_sid)
        )
        return sorted(connection.execute(stmt).scalars())

    # ---- reads

    def get(self, call_sid: str) -> dict[str, Any] | None:
        """The call's record as :meth:`CallRecord.to_json` gives it, lists rebuilt from its
        events, plus ``status`` (``live``, ``ended`` or ``lost``); None if unknown."""
        with self._engine.connect() as connection:
            row = connection.execute(sa.select(calls).where(calls.c.call_sid == call_sid)).first()
            if row is None:
                return None
            events = connection.execute(
                sa.select(call_events.c.kind, call_events.c.data)
                .where(call_events.c.call_sid == call_sid)
                .order_by(call_events.c.seq)
            ).all()
        return _document(row, [(kind, data) for kind, data in events])

    def list(
        self,
        *,
        limit: int = 50,
        since: float | None = None,
        number: str | None = None,
        profile: str | None = None,
        outcome: str | None = None,
        before: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """Calls newest first, as :meth:`get` gives them, and the cursor of the next page
        (pass it as ``before``) or None on the last page.

        ``since``: started at or after (Unix seconds); ``number``: the caller's or the called
        number; ``profile``: the agent profile; ``outcome``: an ``end_reason``, or ``live`` /
        ``lost`` for the calls in that status.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = sa.select(calls)
        if since is not None:
            query = query.where(calls.c.started_at >= since)
        if number is not None:
            query = query.where(sa.or_(calls.c.from_number == number, calls.c.to_number == number))
        if profile is not None:
            query = query.where(calls.c.profile == profile)
        if outcome in ("live", "lost"):
            query = query.where(calls.c.status == outcome)
        elif outcome is not None:
            query = query.where(calls.c.end_reason == outcome)
        if before is not None:
            started_at, sid = _decode_cursor(before)
            query = query.where(
                sa.or_(
                    calls.c.started_at < started_at,
                    sa.and_(calls.c.started_at == started_at, calls.c.call_sid < sid),
                )
            )
        query = query.order_by(calls.c.started_at.desc(), calls.c.call_sid.desc()).limit(limit + 1)
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
            page = rows[:limit]
            events: dict[str, builtins.list[tuple[str, str]]] = {row.call_sid: [] for row in page}
            if page:
                for sid, kind, data in connection.execute(
                    sa.select(call_events.c.call_sid, call_events.c.kind, call_events.c.data)
                    .where(call_events.c.call_sid.in_(list(events)))
                    .order_by(call_events.c.call_sid, call_events.c.seq)
                ):
                    events[sid].append((kind, data))
        docs = [_document(row, events[row.call_sid]) for row in page]
        if len(rows) <= limit:
            return docs, None
        return docs, _encode_cursor(page[-1].started_at, page[-1].call_sid)

    def spent_since(self, since: float, direction: str = "outbound") -> float:
        """Estimated cost (USD) of the calls in ``direction`` that started at or after
        ``since`` (Unix seconds); calls still live count what they have cost when they end."""
        with self._engine.connect() as connection:
            summaries = connection.execute(
                sa.select(calls.c.summary).where(
                    calls.c.started_at >= since, calls.c.direction == direction
                )
            ).scalars()
            total = 0.0
            for summary in summaries:
                cost = json.loads(summary).get("cost_usd") or {}
                total += float(cost.get("total") or 0.0)
        return total

    async def get_async(self, call_sid: str) -> dict[str, Any] | None:
        """:meth:`get` in a worker thread."""
        return await asyncio.to_thread(self.get, call_sid)

    async def list_async(
        self,
        *,
        limit: int = 50,
        since: float | None = None,
        number: str | None = None,
        profile: str | None = None,
        outcome: str | None = None,
        before: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """:meth:`list` in a worker thread."""
        return await asyncio.to_thread(
            lambda: self.list(
                limit=limit,
                since=since,
                number=number,
                profile=profile,
                outcome=outcome,
                before=before,
            )
        )

    async def spent_since_async(self, since: float, direction: str = "outbound") -> float:
        """:meth:`spent_since` in a worker thread."""
        return await asyncio.to_thread(self.spent_since, since, direction)


# ---- records to rows and back


def _row(record: CallRecord) -> dict[str, Any]:
    """The ``calls`` columns the record decides (the store adds status, owner, heartbeat)."""
    summary = {key: getattr(record, key) for key in SUMMARY_KEYS}
    summary["usage"] = asdict(record.usage)
    return {
        "call_sid": record.call_sid,
        "direction": record.direction,
        "profile": record.profile,
        "from_number": record.from_,
        "to_number": record.to,
        "country": record.country,
        "started_at": float(record.started_at),
        "ended_at": record.ended_at,
        "duration_s": float(record.duration_s),
        "end_reason": record.end_reason,
        "summary": _dumps(summary),
    }


def _new_events(record: CallRecord, written: _Written, *, final: bool) -> list[dict[str, Any]]:
    """The events of ``record`` not yet in ``written``, numbered, serialized now (so the
    caller may go on changing the record), and counted into ``written``."""
    new: list[tuple[EventKind, Any]] = []
    transcript = record.transcript[written.transcript :]
    written.transcript += len(transcript)
    new.extend(("transcript", line) for line in transcript)
    for index, call in enumerate(record.tool_calls):
        if index not in written.tool_calls and (final or call.get("output") is not None):
            written.tool_calls.add(index)
            new.append(("tool_call", {"index": index, "call": call}))
    interruptions = record.interruptions[written.interruptions :]
    written.interruptions += len(interruptions)
    new.extend(("interruption", item) for item in interruptions)
    digits = record.dtmf[written.dtmf :]
    written.dtmf += len(digits)
    new.extend(("dtmf", {"digit": digit}) for digit in digits)
    outages = record.outages[written.outages :]
    written.outages += len(outages)
    new.extend(("outage", item) for item in outages)
    rows = []
    for kind, data in new:
        rows.append(
            {"call_sid": record.call_sid, "seq": written.seq, "kind": kind, "data": _dumps(data)}
        )
        written.seq += 1
    return rows


def _document(row: Row[Any], events: list[tuple[str, str]]) -> dict[str, Any]:
    """A ``calls`` row and its events (in order) as ``CallRecord.to_json()`` plus status and
    the container that served the call (``served_by``)."""
    summary = json.loads(row.summary)
    lists: dict[str, list[Any]] = {
        "transcript": [],
        "tool_calls": [],
        "interruptions": [],
        "dtmf": [],
        "outages": [],
    }
    tool_calls: list[tuple[int, dict[str, Any]]] = []
    for kind, data in events:
        item = json.loads(data)
        if kind == "transcript":
            lists["transcript"].append(item)
        elif kind == "tool_call":
            tool_calls.append((int(item["index"]), item["call"]))
        elif kind == "interruption":
            lists["interruptions"].append(item)
        elif kind == "dtmf":
            lists["dtmf"].append(item["digit"])
        elif kind == "outage":
            lists["outages"].append(item)
    # In the order the model made them, whatever order they finished in.
    lists["tool_calls"] = [call for _, call in sorted(tool_calls, key=lambda pair: pair[0])]
    columns = {
        "call_sid": row.call_sid,
        "from_": row.from_number,
        "to": row.to_number,
        "country": row.country,
        "profile": row.profile,
        "direction": row.direction,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "duration_s": row.duration_s,
        "end_reason": row.end_reason,
    }
    doc: dict[str, Any] = {}
    for f in fields(CallRecord):  # to_json()'s order: the fields, then "from" moved last
        if f.name in columns:
            doc[f.name] = columns[f.name]
        elif f.name in lists:
            doc[f.name] = lists[f.name]
        else:
            doc[f.name] = summary.get(f.name, _BLANK[f.name])
    doc["from"] = doc.pop("from_")
    status: Status = row.status
    doc["status"] = status
    doc["served_by"] = row.owner  # the container that wrote it last (host:pid)
    return doc


def _dumps(value: Any) -> str:
    # default=str: a value JSON cannot hold is stored as its text rather than failing the call.
    return json.dumps(value, default=str)


def _encode_cursor(started_at: float, call_sid: str) -> str:
    raw = json.dumps([started_at, call_sid]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, call_sid = json.loads(raw)
        return float(started_at), str(call_sid)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"not a cursor from RecordStore.list: {cursor!r}") from exc
