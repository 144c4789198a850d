"""The call records' tables, as SQLAlchemy Core metadata.

One ``calls`` row per call, written as soon as the call starts (``status`` ``live``) and closed
when it ends (``ended``) or when its container is found dead (``lost``). Everything a call
accumulates in lists goes to ``call_events``, one row per transcript line, finished tool call,
interruption, keypad digit or Realtime outage, numbered per call, so a call is written by
appending rows rather than by rewriting a document. The migrations in ``migrations/versions``
create exactly these tables (a test compares them).
"""

from __future__ import annotations

from typing import Final, Literal

import sqlalchemy as sa

metadata = sa.MetaData()

Status = Literal["live", "ended", "lost"]
EventKind = Literal["transcript", "tool_call", "interruption", "dtmf", "outage"]

LOST_REASON: Final = "container_lost"
"""The ``end_reason`` of a call closed because its container stopped heart-beating."""

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_sid", sa.Text, primary_key=True),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("profile", sa.Text, nullable=False),
    sa.Column("from_number", sa.Text, nullable=False),
    sa.Column("to_number", sa.Text, nullable=False),
    sa.Column("country", sa.Text, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),  # Unix seconds
    sa.Column("ended_at", sa.Double, nullable=True),
    sa.Column("duration_s", sa.Double, nullable=False),
    sa.Column("end_reason", sa.Text, nullable=False),  # '' while live
    sa.Column("status", sa.Text, nullable=False),  # live | ended | lost
    sa.Column("owner", sa.Text, nullable=False),  # the store (container) that writes the call
    sa.Column("heartbeat_at", sa.Double, nullable=False),
    # JSON: what the record holds besides its columns and lists (usage, cost, context, ...).
    sa.Column("summary", sa.Text, nullable=False),
    sa.Index("ix_calls_started_at", "started_at", "call_sid"),
    sa.Index("ix_calls_from_number", "from_number", "started_at"),
    sa.Index("ix_calls_to_number", "to_number", "started_at"),
    sa.Index("ix_calls_profile", "profile", "started_at"),
    sa.Index("ix_calls_end_reason", "end_reason", "started_at"),
    sa.Index("ix_calls_status_heartbeat", "status", "heartbeat_at"),
)

call_events = sa.Table(
    "call_events",
    metadata,
    sa.Column("call_sid", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),  # order within a call
    # transcript | tool_call | interruption | dtmf | outage
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON
)
