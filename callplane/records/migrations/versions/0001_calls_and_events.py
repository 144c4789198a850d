"""Calls and their events: records written as the call goes.

Creates ``calls`` (one row per call: live, ended or lost) and ``call_events`` (its transcript
lines, tool calls, interruptions and keypad digits, numbered per call).

A SQLite file from before the migrations (one ``calls`` table holding a JSON document per call)
is converted in place: each document becomes a ``calls`` row and its events, so the local
stack's past calls stay listed.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY = "calls_before_migrations"
SUMMARY_KEYS = (
    "usage",
    "reconnects",
    "renewals",
    "transferred_to",
    "answered_by",
    "voicemail_left",
    "context",
    "cost_usd",
)


def upgrade() -> None:
    bind = op.get_bind()
    legacy = "calls" in sa.inspect(bind).get_table_names()
    if legacy:
        op.rename_table("calls", LEGACY)
    calls = op.create_table(
        "calls",
        sa.Column("call_sid", sa.Text, primary_key=True),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("profile", sa.Text, nullable=False),
        sa.Column("from_number", sa.Text, nullable=False),
        sa.Column("to_number", sa.Text, nullable=False),
        sa.Column("country", sa.Text, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double, nullable=True),
        sa.Column("duration_s", sa.Double, nullable=False),
        sa.Column("end_reason", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("heartbeat_at", sa.Double, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at", "call_sid"])
    op.create_index("ix_calls_from_number", "calls", ["from_number", "started_at"])
    op.create_index("ix_calls_to_number", "calls", ["to_number", "started_at"])
    op.create_index("ix_calls_profile", "calls", ["profile", "started_at"])
    op.create_index("ix_calls_end_reason", "calls", ["end_reason", "started_at"])
    op.create_index("ix_calls_status_heartbeat", "calls", ["status", "heartbeat_at"])
    events = op.create_table(
        "call_events",
        sa.Column("call_sid", sa.Text, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    if legacy:
        _convert_legacy(bind, calls, events)
        op.drop_table(LEGACY)


def downgrade() -> None:
    op.drop_table("call_events")
    op.drop_table("calls")


def _convert_legacy(bind: sa.Connection, calls: sa.Table, events: sa.Table) -> None:
    """Each stored document (``CallRecord.to_json()``) as a closed call and its events."""
    docs = bind.execute(sa.text(f"SELECT doc FROM {LEGACY}")).scalars().all()
    for doc in docs:
        data = json.loads(doc)
        ended_at = data.get("ended_at")
        bind.execute(
            calls.insert().values(
                call_sid=data["call_sid"],
                direction=data.get("direction") or "inbound",
                profile=data.get("profile") or "",
                from_number=data.get("from") or "",
                to_number=data.get("to") or "",
                country=data.get("country") or "",
                started_at=float(data.get("started_at") or 0.0),
                ended_at=ended_at,
                duration_s=float(data.get("duration_s") or 0.0),
                end_reason=data.get("end_reason") or "",
                status="ended",
                owner="",
                heartbeat_at=float(ended_at or data.get("started_at") or 0.0),
                summary=json.dumps({k: data[k] for k in SUMMARY_KEYS if k in data}),
            )
        )
        rows: list[dict[str, Any]] = []
        tool_calls = enumerate(data.get("tool_calls") or [])
        for kind, items in (
            ("transcript", data.get("transcript") or []),
            ("tool_call", [{"index": i, "call": call} for i, call in tool_calls]),
            ("interruption", data.get("interruptions") or []),
            ("dtmf", [{"digit": d} for d in data.get("dtmf") or []]),
        ):
            for item in items:
                rows.append(
                    {
                        "call_sid": data["call_sid"],
                        "seq": len(rows),
                        "kind": kind,
                        "data": json.dumps(item),
                    }
                )
        if rows:
            bind.execute(events.insert(), rows)
