"""Call records: what happened on a call, stored in SQLite locally.

A record is filled as the call goes (transcript lines, tool calls, interruptions, token usage,
reconnects) and closed with the end time, duration and estimated cost. Stored as one JSON
document per call, keyed by CallSid, with the fields people filter on as columns.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from callplane.pricing import DEFAULT_PRICES, PriceTable


@dataclass
class Usage:
    input_text: int = 0
    input_audio: int = 0
    output_text: int = 0
    output_audio: int = 0

    def add(self, usage: dict[str, Any]) -> None:
        """Accumulate a GA ``response.usage`` object."""
        inp = usage.get("input_token_details") or {}
        out = usage.get("output_token_details") or {}
        self.input_text += int(inp.get("text_tokens") or 0)
        self.input_audio += int(inp.get("audio_tokens") or 0)
        self.output_text += int(out.get("text_tokens") or 0)
        self.output_audio += int(out.get("audio_tokens") or 0)


@dataclass
class CallRecord:
    call_sid: str
    from_: str = ""
    to: str = ""
    country: str = ""
    profile: str = ""
    direction: Literal["inbound", "outbound"] = "inbound"
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    duration_s: float = 0.0
    end_reason: str = ""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    reconnects: int = 0
    renewals: int = 0
    transferred_to: str | None = None
    answered_by: str | None = None  # outbound: Twilio's AnsweredBy
    voicemail_left: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    cost_usd: dict[str, float] = field(default_factory=dict)

    def say(self, role: Literal["caller", "agent"], text: str) -> None:
        self.transcript.append(
            {"role": role, "text": text, "at": round(time.time() - self.started_at, 3)}
        )

    def close(self, reason: str, prices: PriceTable = DEFAULT_PRICES) -> None:
        self.ended_at = time.time()
        self.duration_s = round(self.ended_at - self.started_at, 3)
        self.end_reason = reason
        u = self.usage
        telephony = prices.telephony(self.country, self.duration_s)
        model = prices.model(u.input_audio, u.output_audio, u.input_text, u.output_text)
        self.cost_usd = {
            "telephony": round(telephony, 6),
            "model": round(model, 6),
            "total": round(telephony + model, 6),
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_")
        return data


class RecordStore:
    """SQLite storage of call records: one file, one process with many calls.

    A commit waits for the disk, so the media plane never saves on its event loop: it calls
    :meth:`save_async`, which runs the write on the store's own single thread (writes stay in
    order, and a burst of calls ending together costs the live calls nothing). The journal is
    WAL with ``synchronous=NORMAL``: a crash of the process loses nothing committed, a power
    loss may lose the last records, and a commit costs no fsync.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, used from the loop and the writer
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS calls (call_sid TEXT PRIMARY KEY, started_at REAL, "
                "from_number TEXT, to_number TEXT, profile TEXT, doc TEXT NOT NULL)"
            )
            self._db.commit()

    def save(self, record: CallRecord) -> None:
        """Write ``record`` now (blocking; from async code use :meth:`save_async`)."""
        row = (
            record.call_sid,
            record.started_at,
            record.from_,
            record.to,
            record.profile,
            json.dumps(record.to_json()),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?)", row)
            self._db.commit()

    async def save_async(self, record: CallRecord) -> None:
        """Write ``record`` on the store's writer thread, without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.save, record)

    def get(self, call_sid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM calls WHERE call_sid = ?", (call_sid,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def spent_since(self, since: float, direction: str = "outbound") -> float:
        """Estimated cost (USD) of the calls in ``direction`` that started at or after
        ``since`` (Unix seconds)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM calls WHERE started_at >= ?", (since,)
            ).fetchall()
        total = 0.0
        for (doc,) in rows:
            data = json.loads(doc)
            if data.get("direction") == direction:
                total += float((data.get("cost_usd") or {}).get("total") or 0.0)
        return total

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM calls ORDER BY started_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # pending saves land first
        with self._lock:
            self._db.close()
