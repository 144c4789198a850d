"""The simulated carrier: rings a number, follows its TwiML and plays the media stream.

This is the part of Twilio a phone voice agent actually meets on a call, reproduced closely
enough that the bridge code under test cannot tell the difference on the wire:

* the voice webhook is a form POST (or GET) with Twilio's parameters, signed with
  ``X-Twilio-Signature`` (HMAC-SHA1 with the account's auth token over the exact URL + params);
* ``<Connect><Stream>`` opens a WebSocket to the stream URL, signed on the upgrade request over
  the URL alone, then sends ``connected``, ``start`` and one ``media`` frame every 20 ms in real
  time (160 bytes µ-law; ``sequenceNumber``/``chunk``/``timestamp`` as strings), ``dtmf`` when the
  caller presses keys and ``stop`` when the caller or the REST API ends the call;
* audio the bot sends is queued and "played" in real time (160 bytes per 20 ms). A ``mark`` is
  echoed once everything queued before it has played; ``clear`` empties the queue at once and
  echoes every pending mark right away, as Twilio does;
* status callbacks (initiated, ringing, in-progress, completed with ``CallDuration``) are
  POSTed, signed, in order.

Everything a test wants to check afterwards is in the :class:`CallResult`: a stereo WAV of the
call (left: the caller, right: the bot as heard, i.e. after clears), and a :class:`Timeline`
with when each bot chunk played, when each ``clear`` arrived and the played position of each
mark. All times are milliseconds since the call was placed.

One 20 ms clock per call drives both directions, so the two WAV channels stay aligned and
the caller script (``caller.py``) sees the bot's audio exactly when it would have been heard.

The carrier itself only places calls and keeps them addressable by SID; the rest is in:

* ``call.py``: one call's state machine (:class:`LiveCall`), from ringing to final status;
* ``dialing.py``: how long an outbound call rings, who picks up, what AMD reports;
* ``verbs.py``: running ``<Say>``, ``<Pause>``, ``<Dial>`` and ``<Connect><Stream>``;
* ``call_audio.py`` and ``playback.py``: the 20 ms clock, both audio directions, marks, clears;
* ``media_stream.py``: the Media Streams wire format and WebSocket, Twilio's side;
* ``webhooks.py`` and ``status_callbacks.py``: signed requests, in-order status callbacks;
* ``recording.py`` and ``timeline.py``: the WAV and the records a test checks afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from callplane_standins.twilio_simulator import caller as caller_mod
from callplane_standins.twilio_simulator.call import LiveCall
from callplane_standins.twilio_simulator.callee import Callee
from callplane_standins.twilio_simulator.caller import Step
from callplane_standins.twilio_simulator.state import (
    CallResource,
    PhoneNumberRecord,
    StateStore,
    new_sid,
)
from callplane_standins.twilio_simulator.status_callbacks import INBOUND_STATUS_EVENTS
from callplane_standins.twilio_simulator.twiml import Instruction
from callplane_standins.twilio_simulator.webhooks import WebhookClient

__all__ = ["MAX_FINISHED_CALLS", "Carrier"]

MAX_FINISHED_CALLS = 200
"""Finished calls kept addressable by SID (their timelines, for tests and `GET` of a result);
older ones are dropped first, so a long-running simulator holds a bounded history. Their audio
is on disk (the WAV) and was let go when each call ended."""


class Carrier:
    """Places calls on the simulator's numbers and keeps the live ones addressable by SID.

    ``tokens`` maps account SIDs to auth tokens (webhooks are signed with the owning account's
    token). The carrier owns the webhook client (:attr:`webhooks`) all its calls share; call
    :meth:`close` when done.
    """

    def __init__(
        self,
        store: StateStore,
        tokens: Mapping[str, str],
        recordings_dir: Path,
        *,
        ring_s: float = 0.1,
        dial_hold_s: float = 0.5,
        webhook_timeout_s: float = 15.0,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.recordings_dir = recordings_dir
        self.ring_s = ring_s
        self.dial_hold_s = dial_hold_s
        self.webhook_timeout_s = webhook_timeout_s
        self.calls: dict[str, LiveCall] = {}
        self.webhooks = WebhookClient(webhook_timeout_s)
        self._runners: set[asyncio.Task[None]] = set()

    # ---- HTTP -------------------------------------------------------------------------

    async def http_request(
        self, url: str, method: str, params: Mapping[str, str], auth_token: str
    ) -> str:
        """A signed webhook request as Twilio makes it; returns the response body.

        Raises :class:`~callplane_standins.twilio_simulator.webhooks.WebhookError` when it fails.
        """
        return await self.webhooks.request(url, method, params, auth_token)

    # ---- calls ------------------------------------------------------------------------

    def _token(self, account_sid: str) -> str:
        token = self.tokens.get(account_sid)
        if token is None:
            raise KeyError(f"no auth token known for account {account_sid}")
        return token

    def _register(self, call: LiveCall, runner: Coroutine[Any, Any, None]) -> None:
        self.calls[call.call_sid] = call
        finished = [sid for sid, c in self.calls.items() if not c.live]
        for sid in finished[: max(len(finished) - MAX_FINISHED_CALLS, 0)]:
            del self.calls[sid]

        task = asyncio.create_task(runner)
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    async def start_inbound(
        self,
        number: PhoneNumberRecord,
        from_: str,
        script: Sequence[Step],
        *,
        max_duration_s: float = 60.0,
    ) -> LiveCall:
        """Ring ``number`` from ``from_`` with a scripted caller; returns once the call exists.

        The script's speech is synthesised before the phone rings.
        """
        speech = await caller_mod.render_script(script)
        record = CallResource(
            sid=new_sid("CA"),
            account_sid=number.account_sid,
            from_number=from_,
            to=number.phone_number,
            direction="inbound",
            status="queued",
            phone_number_sid=number.sid,
        )
        self.store.put_call(record)
        call = LiveCall(
            self,
            record,
            self._token(number.account_sid),
            script,
            speech,
            status_callback=number.status_callback,
            status_callback_method=number.status_callback_method,
            status_events=INBOUND_STATUS_EVENTS,
            max_duration_s=max_duration_s,
            number=number,
        )
        call.note("placed", from_=from_, to=number.phone_number)
        self._register(call, call.run_inbound())
        return call

    async def start_outbound(
        self,
        record: CallResource,
        *,
        url: str,
        method: str,
        instructions: list[Instruction] | None,
        callee: Callee | None,
        ring_timeout_s: float,
        max_duration_s: float = 60.0,
        machine_detection: str | None = None,
    ) -> LiveCall:
        """Run an outbound-api call already recorded as ``queued``.

        ``callee`` is the far party; None means nobody answers (``no-answer`` after
        ``ring_timeout_s``). ``machine_detection`` is Twilio's MachineDetection parameter.
        """
        connected = callee.connected_script(machine_detection) if callee else []
        ahead = callee.greeting_steps() if callee else []
        speech = await caller_mod.render_script([*connected, *ahead])
        number = self.store.find_number(record.to)
        call = LiveCall(
            self,
            record,
            self._token(record.account_sid),
            connected,
            speech,
            status_callback=record.status_callback,
            status_callback_method=record.status_callback_method,
            status_events=frozenset(record.status_callback_events),
            max_duration_s=max_duration_s,
            number=number,
        )
        call.note("placed", from_=record.from_number, to=record.to)
        self._register(
            call,
            call.run_outbound(url, method, instructions, callee, ring_timeout_s, machine_detection),
        )
        return call

    def live(self, call_sid: str) -> LiveCall | None:
        """The call if it is still in progress."""
        call = self.calls.get(call_sid)
        return call if call is not None and call.live else None

    async def close(self) -> None:
        """Hang up every live call (as the carrier going away) and close the HTTP session."""
        for call in list(self.calls.values()):
            if call.live:
                call.hang_up("remote", "simulator stopping")
        if self._runners:
            await asyncio.wait(set(self._runners), timeout=10)
        for task in list(self._runners):
            task.cancel()
        await self.webhooks.close()
