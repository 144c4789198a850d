"""What happened on a call: the record a conversation fills as the call goes.

A record is filled as the call goes (transcript lines, tool calls, interruptions, keypad digits,
Realtime outages, token usage, reconnects) and closed with the end time, duration and
estimated cost. A store can watch it (:meth:`CallRecord.watch`) to write each change while the
call is still on, so a container that dies mid-call leaves everything up to its last heartbeat
behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from callplane.pricing import DEFAULT_PRICES, PriceTable

log = logging.getLogger(__name__)


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


OutageOutcome = Literal["recovered", "gave_up", "call_ended"]
"""How a Realtime outage ended: the session came back, the call gave up, or the caller left."""

RecordListener = Callable[["CallRecord"], None]
"""Called with the record after each change made through its methods
(see :meth:`CallRecord.watch`)."""


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
    # Each time the Realtime session was lost mid-call: when, for how long, how it ended.
    outages: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    reconnects: int = 0
    renewals: int = 0
    transferred_to: str | None = None
    answered_by: str | None = None  # outbound: Twilio's AnsweredBy
    voicemail_left: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    cost_usd: dict[str, float] = field(default_factory=dict)
    # Frames from the far end that were dropped (malformed, oversized, binary), by reason: a
    # call goes on past them, and this says it had them.
    dropped_frames: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Not a dataclass field: asdict(), to_json(), repr and == never see the listener.
        self.on_change: RecordListener | None = None

    def watch(self, callback: RecordListener | None) -> None:
        """Call ``callback(record)`` after every change made through :meth:`say`,
        :meth:`tool_started`, :meth:`tool_finished`, :meth:`interrupted`,
        :meth:`key_pressed` and :meth:`outage`, so a store can write the call while it is on
        (``record.watch(store.call_progress)``). ``None`` stops watching. One listener at a
        time; a listener that raises is logged and never breaks the call."""
        self.on_change = callback

    def _changed(self) -> None:
        callback = self.on_change
        if callback is None:
            return
        try:
            callback(self)
        except Exception:
            log.exception("call %s: record listener failed", self.call_sid)

    def say(self, role: Literal["caller", "agent"], text: str) -> None:
        """Add a transcript line, stamped with the seconds since the call started."""
        self.transcript.append(
            {"role": role, "text": text, "at": round(time.time() - self.started_at, 3)}
        )
        self._changed()

    def tool_started(self, name: str, call_id: str, arguments: str) -> None:
        """Note a tool call the model made; its output is ``None`` until
        :meth:`tool_finished`."""
        self.tool_calls.append(
            {"name": name, "call_id": call_id, "arguments": arguments, "output": None}
        )
        self._changed()

    def tool_finished(self, call_id: str, output: str) -> None:
        """Set the output of the tool call ``call_id``."""
        for entry in self.tool_calls:
            if entry["call_id"] == call_id:
                entry["output"] = output
        self._changed()

    def interrupted(self, item_id: str, audio_end_ms: int) -> None:
        """Note that the caller cut the agent off ``audio_end_ms`` into item ``item_id``."""
        self.interruptions.append(
            {
                "at": round(time.time() - self.started_at, 3),
                "item_id": item_id,
                "audio_end_ms": audio_end_ms,
            }
        )
        self._changed()

    def key_pressed(self, digit: str) -> None:
        """Note a keypad digit (DTMF) the caller pressed."""
        self.dtmf.append(digit)
        self._changed()

    def frame_dropped(self, reason: str) -> None:
        """Count a frame from the far end that was dropped for ``reason``. Not a change that
        is written at once (a flood of bad frames must not become a flood of writes): the
        counts go with the call's next write, its end at the latest."""
        self.dropped_frames[reason] = self.dropped_frames.get(reason, 0) + 1

    def outage(
        self,
        lost_at: float,
        duration_s: float,
        attempts: int,
        outcome: OutageOutcome,
        cause: str,
    ) -> None:
        """Note that the Realtime session was lost at ``lost_at`` (Unix seconds) for
        ``duration_s`` while the caller was on hold: ``recovered`` (the call went on),
        ``gave_up`` (the call ended as realtime_unavailable) or ``call_ended`` (the caller
        hung up first). ``attempts`` is how many times the session was re-opened."""
        self.outages.append(
            {
                "at": round(lost_at - self.started_at, 3),
                "duration_s": round(duration_s, 3),
                "attempts": attempts,
                "outcome": outcome,
                "cause": cause,
            }
        )
        self._changed()

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
