"""The conversation core: one call, any transport, the Realtime API.

Per call it keeps the Realtime session configured from the agent profile, forwards caller
audio, plays the agent's audio with mark accounting, handles barge-in (clear, truncate at what
was heard, cancel), runs tools without blocking audio, maps DTMF, renews the session before its
time limit and reconnects after an unexpected close without dropping the caller, and fills the
call record.

One path per frame, synchronous: the transport calls :meth:`Conversation.on_audio` (and
``on_mark``, ``on_dtmf``, ``on_end``) from its socket's callback, and the Realtime client calls
:meth:`Conversation.on_realtime_event` from its own. Caller audio goes to
``RealtimeClient.append_audio`` untouched; agent audio goes to ``Transport.play`` untouched; a
barge-in clears the far end and truncates the item within the callback that brought
``speech_started``. None of them waits: a congested socket holds what is sent, in order. No
validation or logging per frame. Coroutines are for what takes time: opening, renewing and
re-opening the session, tools, and the REST calls that hang up or transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from callplane.profiles import AgentProfile, fill_template, session_config, transfer_target
from callplane.realtime.backoff import backoff_schedule
from callplane.realtime.client import Dial, RealtimeClient, RealtimeClosed, RealtimeSettings
from callplane.realtime.directives import say_exactly
from callplane.records import CallRecord
from callplane.records.model import OutageOutcome
from callplane.tools import CallContext, ToolSet, TransferFailed
from callplane.transports.base import Transport
from callplane.transports.playback import PlaybackTracker

log = logging.getLogger("callplane.conversation")

# While the Realtime session is being re-opened, the hold filler is played again this often,
# so a caller on hold for half a minute hears that the line is alive, not one chime and silence.
HOLD_REPEAT_S = 4.0
# One attempt to re-open the session may take at least this long, even when the outage budget
# is nearly spent (a TLS handshake with OpenAI takes a few hundred milliseconds).
MIN_ATTEMPT_S = 2.0
# The end reason of a call whose Realtime session could not be (re-)opened.
REALTIME_UNAVAILABLE = "realtime_unavailable"
# After end_call or a transfer, wait at most this long for the goodbye to finish playing.
PLAYOUT_WAIT_S = 15.0
# A call that ends while the carrier is taking a transfer waits this long for its answer, so
# that the record says whether the caller was transferred or hung up.
TRANSFER_SETTLE_S = 15.0
# A caller turn that got no response within this long no longer holds back a renewal.
CALLER_TURN_MAX_S = 30.0


AgentState = Literal["listening", "thinking", "speaking"]
Speaker = Literal["agent", "user"]


class ConversationObserver(Protocol):
    """Watches a call as it goes, for transports that show it (a LiveKit room publishes the
    agent's state and live transcripts to its participants). Optional: phone calls pass none.

    Called synchronously from the conversation's event handling, so implementations must
    return at once (queue the work); an exception is logged and does not affect the call.
    """

    def on_state(self, state: AgentState) -> None:
        """The agent is now listening, thinking (a response is on its way) or speaking (its
        audio is being played). Called on changes only."""
        ...

    def on_transcript(self, speaker: Speaker, text: str, final: bool, item_id: str) -> None:
        """The text of one segment so far (``text`` is cumulative, not a delta); ``final``
        once it is complete. ``item_id`` is the Realtime conversation item, stable per
        segment."""
        ...


class _Context(CallContext):
    def __init__(self, conversation: Conversation, context: Mapping[str, Any]) -> None:
        self._conversation = conversation
        self.call_sid = conversation.record.call_sid
        self.context = context

    async def hang_up(self) -> None:
        self._conversation.request_end("agent_hung_up")

    async def transfer(self, to: str) -> str:
        return await self._conversation.transfer(to)


class Conversation:
    """Run one call to completion with :meth:`run`.

    It is the transport's :class:`~callplane.transports.base.TransportHandler` and the
    Realtime client's event handler while the call runs (see the module docstring).
    ``dial`` opens the Realtime socket (tests pass a fake one); None dials with picows.
    """

    def __init__(
        self,
        transport: Transport,
        profile: AgentProfile,
        tools: ToolSet,
        realtime: RealtimeSettings,
        record: CallRecord,
        *,
        context: Mapping[str, Any] | None = None,
        filler: bytes = b"",
        answered_by: str | None = None,
        observer: ConversationObserver | None = None,
        dial: Dial | None = None,
    ) -> None:
        self.transport = transport
        self.profile = profile
        self.tools = tools
        self.settings = realtime
        self.record = record
        self.context = dict(context or {})
        self.filler = filler  # played to the caller while the Realtime socket is re-opened
        # Twilio's AnsweredBy on outbound calls: "human", "machine_end_beep", ... (None inbound)
        self.answered_by = answered_by
        self.playback = PlaybackTracker(transport.bytes_per_ms)
        self._dial = dial
        self.rt = self._client()
        self._ctx = _Context(self, self.context)
        self._response_active = False
        self._pending_calls: list[tuple[str, asyncio.Task[str]]] = []
        self._end_requested: str | None = None
        self._far_end_reason: str | None = None  # why the transport ended, if it did
        self._transfer_pending: str | None = None  # the number a transfer under way dials
        # Set once the carrier answered the transfer under way (None: none was attempted).
        self._transfer_settled: asyncio.Event | None = None
        self._idle = asyncio.Event()  # set whenever the far end has nothing left to play
        self._idle.set()
        self._turn_changed = asyncio.Event()  # pulsed when a response ends or playback drains
        # When the caller started speaking, until the response to it began (None: no turn
        # open). A renewal mid-utterance would cut the caller's words in two.
        self._caller_turn_since: float | None = None
        # When we asked for a response that has not started yet, and how many tool calls are
        # running or unanswered: a renewal then would lose the request or the call's output.
        self._response_requested_at: float | None = None
        self._tools_in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: asyncio.Future[None] | None = None  # resolved when the call is over
        self._reconnecting = False
        self._session_started = 0.0
        self.dropped_audio_frames = 0
        self.observer = observer
        self._state: AgentState | None = None
        self._partial: dict[str, str] = {}  # item_id -> transcript so far (with an observer)

    # --- public ------------------------------------------------------------------------------

    async def run(self) -> CallRecord:
        """Run the call until it ends; return its record, closed with the end reason.

        The reason says what ended the call: the transport's (``caller_hung_up``,
        ``stream_closed``, ...), a request (``agent_hung_up``, ``transferred``, ...),
        ``realtime_unavailable`` when the session could not be kept, ``cancelled`` when the
        task running it was, or ``internal_error`` when this code raised: that exception is
        logged here, once, the call is hung up, and the record is returned as for any other
        end."""
        reason = "internal_error"  # until the call ends in one of the ways below
        self._done = asyncio.get_running_loop().create_future()
        try:
            await self._open_realtime(greet=True)
            self._set_state("listening")
            self.transport.listen(self)
            self._spawn(self._renewal_timer())
            self._spawn(self._call_time_limit())
            await self._done
            await self._settle_transfer()
            reason = self._end_requested or self._far_end_reason or "caller_hung_up"
        except RealtimeClosed as exc:
            reason = REALTIME_UNAVAILABLE
            log.error("call %s: %s: %s", self.record.call_sid, reason, exc)
            with contextlib.suppress(Exception):
                await self.transport.hang_up()
        except asyncio.CancelledError:
            reason = "cancelled"  # the server running the call stopped before it ended
            raise
        except Exception:
            log.exception("call %s: failed; the call is hung up", self.record.call_sid)
            with contextlib.suppress(Exception):
                await self.transport.hang_up()
        finally:
            self.transport.listen(None)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.rt.close()
            self.record.close(reason)
        return self.record

    def request_end(self, reason: str) -> None:
        """Hang up once what the caller is hearing has played (the goodbye)."""
        if self._end_requested is None:
            self._end_requested = reason
            self._spawn(self._after_playout(self.transport.hang_up))

    async def transfer(self, to: str) -> str:
        """Move the caller to ``to`` (a department of the profile or a number, see
        :func:`~callplane.profiles.transfer_target`) once what they are hearing has played;
        return the number dialled.

        Only a transfer the carrier took counts: then the record names the number and, when
        the transport's whole line moved (a phone call), the call ends as ``transferred``.
        When one phone caller of a room moved, the agent goes on serving the others. Anything
        else raises :class:`~callplane.tools.TransferFailed`, the call goes on as before, and
        the model can tell the caller why.
        """
        try:
            number = transfer_target(self.profile, to)
        except ValueError as exc:
            raise TransferFailed(str(exc)) from None
        if self._end_requested is not None:
            raise TransferFailed("the call is already ending")
        if self._transfer_pending is not None:
            raise TransferFailed(f"a transfer to {self._transfer_pending} is already under way")
        self._transfer_pending = number
        try:
            await self._played_out()
            if self._done is not None and self._done.done():
                raise TransferFailed("the caller hung up before the transfer")
            settled = self._transfer_settled = asyncio.Event()
            try:
                outcome = await self.transport.transfer(number)
            finally:
                settled.set()
        finally:
            self._transfer_pending = None
        self.record.transferred_to = number
        if outcome == "line_moved":
            self._end_requested = self._end_requested or "transferred"
        log.info("call %s: transferred to %s (%s)", self.record.call_sid, number, outcome)
        return number

    async def _settle_transfer(self) -> None:
        """If the call ended while the carrier was taking a transfer (its stream closes as it
        moves the call), wait for the answer: it decides between transferred and hung up."""
        settled = self._transfer_settled
        if settled is not None and not settled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), TRANSFER_SETTLE_S)

    def offer_tools(self, tools: ToolSet) -> None:
        """Offer the model ``tools`` from now on instead of the ones it has.

        For a call whose abilities change while it runs: a room's agent offers
        ``transfer_call`` only while a phone caller is in the room. The session is updated at
        once; renewed and reconnected sessions start with the same tools. A call the model
        makes to a tool it is no longer offered is answered as an unknown tool.
        """
        if tools.names() == self.tools.names():
            return
        self.tools = tools
        session = {"type": "realtime", "tools": tools.specs(), "tool_choice": "auto"}
        with contextlib.suppress(RealtimeClosed):  # a new session starts with self.tools
            self.rt.send({"type": "session.update", "session": session})

    def _finish(self, error: BaseException | None = None) -> None:
        """The call is over: :meth:`run` wraps up (raising ``error`` if there is one)."""
        done = self._done
        if done is None or done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    # --- the transport's events (TransportHandler), per frame ------------------------------------

    def on_audio(self, payload_b64: bytes) -> None:
        """Caller audio, straight into an append."""
        try:
            self.rt.append_audio(payload_b64)
        except RealtimeClosed:
            self.dropped_audio_frames += 1  # the session is being re-opened

    def on_mark(self, name: str) -> None:
        self.playback.echoed(name, time.monotonic())
        if not self.playback.playing:
            self._idle.set()
            self._turn_changed.set()
            self._settle_state()

    def on_dtmf(self, digit: str) -> None:
        self.record.key_pressed(digit)
        action = self.profile.dtmf.get(digit, "tell_model")
        if action == "end_call":
            self.request_end("caller_pressed_" + digit)
        elif action.startswith("transfer:"):
            self._spawn(self._transfer_on_key(digit, action.split(":", 1)[1]))
        else:
            self._tell_model(f"(The caller pressed {digit} on the keypad.)")

    async def _transfer_on_key(self, digit: str, to: str) -> None:
        try:
            await self.transfer(to)
        except TransferFailed as exc:
            log.warning("call %s: keypad %s: no transfer: %s", self.record.call_sid, digit, exc)
            self._tell_model(
                f"(The caller pressed {digit} on the keypad to be transferred to {to}, but the "
                f"transfer did not happen: {exc}. They are still on the line.)"
            )

    def _tell_model(self, text: str) -> None:
        """A note for the model, as the caller's turn, answered at once unless a response is
        already on its way."""
        content = [{"type": "input_text", "text": text}]
        item = {"type": "message", "role": "user", "content": content}
        try:
            self.rt.send({"type": "conversation.item.create", "item": item})
            if not self._response_active:
                self._request_response()
        except RealtimeClosed:
            log.warning("call %s: not told (no session): %s", self.record.call_sid, text)

    def on_end(self, reason: str) -> None:
        self._far_end_reason = self._far_end_reason or reason
        settled = self._transfer_settled
        transferring = settled is not None and not settled.is_set()
        if self._end_requested is None and not transferring:
            self._end_requested = reason
        self._finish()

    # --- Realtime session ----------------------------------------------------------------------

    def _client(self) -> RealtimeClient:
        client = RealtimeClient(self.settings, self._dial)
        client.listen(self.on_realtime_event, lambda closed: self._realtime_closed(client, closed))
        return client

    async def _open_realtime(
        self, *, greet: bool, seed: list[dict[str, Any]] | None = None
    ) -> None:
        await self.rt.connect()
        extra = ""
        if self.context:
            extra = "Context for this call: " + json.dumps(self.context, default=str)
        session = session_config(
            self.profile,
            self.tools,
            audio_format=self.transport.audio_format,
            extra_instructions=extra,
        )
        self.rt.send({"type": "session.update", "session": session})
        for item in seed or []:
            self.rt.send({"type": "conversation.item.create", "item": item})
        self._session_started = time.monotonic()
        if greet:
            self._open_the_call()

    def _open_the_call(self) -> None:
        """The agent speaks first: a greeting, an outbound call's opening line, or, to an
        answering machine, the profile's voicemail once and then it hangs up."""
        profile = self.profile
        if self.answered_by is not None and self.answered_by.startswith("machine"):
            if profile.voicemail is None:
                self.request_end("machine_answered")  # nothing to leave: hang up at once
                return
            text = self._filled("voicemail", profile.voicemail)
            if text is None:
                self.request_end("machine_answered")  # a message with holes: leave none
                return
            self._request_response({"instructions": say_exactly(text)})
            self.record.voicemail_left = text
            self.request_end("left_voicemail")
            return
        opening = None
        if self.answered_by is not None and profile.outbound_greeting:
            opening = self._filled("outbound_greeting", profile.outbound_greeting)
        if opening is not None:
            self._request_response({"instructions": say_exactly(opening)})
        elif profile.greeting:
            self._request_response({"instructions": profile.greeting})

    def _filled(self, name: str, template: str) -> str | None:
        """The profile's template ``name`` filled from the call's context, or None when the
        context cannot fill it. ``POST /calls`` refuses such a context, so this only happens
        when the request could not be read back; a raw ``{field}`` is never said."""
        try:
            return fill_template(template, self.context)
        except ValueError as exc:
            log.error(
                "call %s: the profile's %s is not said: %s (context keys: %s)",
                self.record.call_sid,
                name,
                exc,
                sorted(self.context),
            )
            return None

    def _history_items(self) -> list[dict[str, Any]]:
        """The conversation so far as text items, to seed a new session."""
        items: list[dict[str, Any]] = []
        for line in self.record.transcript[-40:]:
            if line["role"] == "caller":
                content = [{"type": "input_text", "text": line["text"]}]
                items.append({"type": "message", "role": "user", "content": content})
            else:
                content = [{"type": "output_text", "text": line["text"]}]
                items.append({"type": "message", "role": "assistant", "content": content})
        return items

    def _realtime_closed(self, client: RealtimeClient, closed: RealtimeClosed) -> None:
        """A session's socket closed without this side asking: re-open it, unless the call
        is ending anyway or a renewal already replaced that socket."""
        if client is not self.rt or self._reconnecting:
            return
        if self._end_requested is not None:
            self._finish()
            return
        self._reconnecting = True
        self._spawn(self._reconnect_or_fail(f"close code {closed.code}"))

    async def _reconnect_or_fail(self, why: str) -> None:
        try:
            await self._reconnect(why)
        except RealtimeClosed as exc:
            self._finish(exc)
        finally:
            self._reconnecting = False

    async def _reconnect(self, why: str) -> None:
        """The socket died: keep the caller on hold (the filler, repeated) while the session is
        re-opened, retrying with capped exponential backoff for the settings'
        ``outage_budget_s``; past that, raise :class:`RealtimeClosed` and the call ends as
        ``realtime_unavailable``. The record gets the outage either way, with its duration."""
        self.record.reconnects += 1
        log.warning("call %s: Realtime socket lost (%s); reconnecting", self.record.call_sid, why)
        self._response_active = False
        loop = asyncio.get_running_loop()
        lost_at, lost_wall = loop.time(), time.time()
        budget = self.settings.outage_budget_s
        deadline = lost_at + budget
        waits = iter(backoff_schedule(budget))
        hold: asyncio.Task[None] | None = None
        if self.filler:
            hold = self._spawn(self._hold_the_line())
            await asyncio.sleep(0)  # the first filler goes out before the first attempt
        attempts = 0
        outcome: OutageOutcome = "call_ended"  # unless the loop below says otherwise
        last: BaseException | None = None
        try:
            while True:
                attempts += 1
                with contextlib.suppress(Exception):
                    await self.rt.close()
                self.rt = self._client()
                try:
                    async with asyncio.timeout(max(deadline - loop.time(), MIN_ATTEMPT_S)):
                        await self._open_realtime(greet=False, seed=self._history_items())
                except (OSError, RealtimeClosed, TimeoutError) as exc:
                    last = exc
                else:
                    outcome = "recovered"
                    return
                left = deadline - loop.time()
                if left <= 0:
                    outcome = "gave_up"
                    raise RealtimeClosed(
                        None,
                        f"could not reconnect within {budget:g} s ({attempts} attempts): {last}",
                    )
                await asyncio.sleep(min(next(waits, left), left))
        finally:
            if hold is not None:
                hold.cancel()
            seconds = loop.time() - lost_at
            self.record.outage(lost_wall, seconds, attempts, outcome, why)
            log.log(
                logging.INFO if outcome == "recovered" else logging.ERROR,
                "call %s: Realtime outage of %.1f s (%d attempts): %s",
                self.record.call_sid,
                seconds,
                attempts,
                outcome,
            )

    async def _hold_the_line(self) -> None:
        """The hold filler now and every ``HOLD_REPEAT_S`` until cancelled (reconnected)."""
        while True:
            self._play_filler()
            await asyncio.sleep(HOLD_REPEAT_S)

    def _play_filler(self) -> None:
        import base64

        self.transport.play(
            base64.b64encode(self.filler).decode("ascii"),
            self.playback.sent("filler", len(self.filler), time.monotonic()),
        )
        self._idle.clear()

    async def _call_time_limit(self) -> None:
        """At the profile's limit the agent says goodbye, and the call ends once it played."""
        await asyncio.sleep(self.profile.max_call_seconds)
        if self._end_requested is not None:
            return
        log.info("call %s: reached max_call_seconds", self.record.call_sid)
        await self._between_turns()
        goodbye = "The call has reached its time limit. Say a brief, friendly goodbye now."
        with contextlib.suppress(RealtimeClosed):
            self._request_response({"instructions": goodbye})
        self.request_end("call_time_limit")

    async def _renewal_timer(self) -> None:
        """Renew the session before OpenAI's limit, between turns, carrying the text over."""
        while True:
            due = (
                self._session_started + self.settings.session_limit_s - self.settings.renew_margin_s
            )
            await asyncio.sleep(max(0.5, due - time.monotonic()))
            if time.monotonic() < due or self._reconnecting:
                continue
            await self._between_turns()
            old = self.rt
            self.rt = self._client()
            try:
                await self._open_realtime(greet=False, seed=self._history_items())
            except (OSError, RealtimeClosed) as exc:
                self.rt = old  # the old session still has a little time: keep using it
                log.warning("call %s: renewal failed: %s", self.record.call_sid, exc)
                socket = old.socket
                if socket is None or socket.closed:  # and it closed meanwhile
                    self._realtime_closed(old, RealtimeClosed(None, "closed during a renewal"))
                continue
            self.record.renewals += 1
            await old.close()

    def _mid_turn(self) -> bool:
        now = time.monotonic()
        caller = self._caller_turn_since
        requested = self._response_requested_at
        return (
            self._response_active
            or self.playback.playing
            or self._tools_in_flight > 0
            or (caller is not None and now - caller < CALLER_TURN_MAX_S)
            or (requested is not None and now - requested < CALLER_TURN_MAX_S)
        )

    def _request_response(self, response: dict[str, Any] | None = None) -> None:
        """``response.create``; until its ``response.created`` the turn counts as open."""
        self._response_requested_at = time.monotonic()
        event: dict[str, Any] = {"type": "response.create"}
        if response:
            event["response"] = response
        self.rt.send(event)

    async def _between_turns(self) -> None:
        """Return once nothing is in flight: no response requested or streaming, nothing left
        to play, no tool running, and the caller not in the middle of a turn."""
        while self._mid_turn():
            self._turn_changed.clear()
            with contextlib.suppress(TimeoutError):
                # woken by every change; the timeout bounds a caller turn that never ends
                await asyncio.wait_for(self._turn_changed.wait(), CALLER_TURN_MAX_S)

    # --- the Realtime session's events, per event ------------------------------------------------

    def on_realtime_event(self, event: dict[str, Any]) -> None:
        """One server event, handled where the Realtime socket delivers it."""
        etype = event.get("type")
        if etype == "response.output_audio.delta":
            payload = event["delta"]
            nbytes = len(payload) * 3 // 4 - payload.count("=", -2)
            mark = self.playback.sent(event["item_id"], nbytes, time.monotonic())
            self._idle.clear()
            self._set_state("speaking")
            self.transport.play(payload, mark)
        elif etype == "input_audio_buffer.speech_started":
            self._caller_turn_since = time.monotonic()
            self._barge_in()
            self._set_state("listening")
        elif etype == "input_audio_buffer.speech_stopped":
            self._set_state("thinking")
        elif etype == "response.created":
            self._response_active = True
            self._caller_turn_since = None
            self._response_requested_at = None
            self._settle_state()
        elif etype == "response.done":
            self._response_active = False
            self._turn_changed.set()
            response = event.get("response") or {}
            self.record.usage.add(response.get("usage") or {})
            if self._pending_calls:
                calls, self._pending_calls = self._pending_calls, []
                self._spawn(self._answer_tools(calls))
            self._settle_state()
        elif etype == "response.output_audio_transcript.delta":
            self._observe_text("agent", event, final=False)
        elif etype == "response.output_audio_transcript.done":
            if event.get("transcript"):  # a response cancelled before it spoke says nothing
                self.record.say("agent", event["transcript"])
            self._observe_text("agent", event, final=True)
        elif etype == "conversation.item.input_audio_transcription.delta":
            self._observe_text("user", event, final=False)
        elif etype == "conversation.item.input_audio_transcription.completed":
            if event.get("transcript"):
                self.record.say("caller", event["transcript"])
            self._observe_text("user", event, final=True)
        elif etype == "response.function_call_arguments.done":
            self._start_tool(event["name"], event["call_id"], event.get("arguments") or "{}")
        elif etype == "error":
            error = event.get("error") or {}
            if error.get("code") != "response_cancel_not_active":  # a harmless race on barge-in
                log.warning(
                    "call %s: Realtime error %s: %s",
                    self.record.call_sid,
                    error.get("code"),
                    error.get("message"),
                )

    # --- observer ------------------------------------------------------------------------------

    def _set_state(self, state: AgentState) -> None:
        if self.observer is None or state == self._state:
            return
        self._state = state
        try:
            self.observer.on_state(state)
        except Exception:
            log.exception("call %s: observer failed on state %s", self.record.call_sid, state)

    def _settle_state(self) -> None:
        """The state that follows from what is in flight: audio still playing is speaking; a
        response requested, streaming or waiting on a tool is thinking; else listening."""
        if self.observer is None:
            return
        if self.playback.playing:
            self._set_state("speaking")
        elif (
            self._response_active
            or self._response_requested_at is not None
            or self._tools_in_flight > 0
        ):
            self._set_state("thinking")
        else:
            self._set_state("listening")

    def _observe_text(self, speaker: Speaker, event: dict[str, Any], *, final: bool) -> None:
        """Tell the observer a transcript segment grew (a delta) or is complete (a done)."""
        if self.observer is None:
            return
        item_id = str(event.get("item_id") or "")
        if final:
            text = str(event.get("transcript") or "")
            self._partial.pop(item_id, None)
            if not text:
                return
        else:
            text = self._partial.get(item_id, "") + str(event.get("delta") or "")
            self._partial[item_id] = text
        try:
            self.observer.on_transcript(speaker, text, final, item_id)
        except Exception:
            log.exception("call %s: observer failed on a transcript", self.record.call_sid)

    # --- behaviour -------------------------------------------------------------------------------

    def _barge_in(self) -> None:
        """The caller speaks over the agent: stop the audio, remember only what was heard.
        ``clear`` goes out within the callback that brought ``speech_started``."""
        clear, events = self._interrupt()
        if clear:
            self.transport.clear()
        try:
            for event in events:
                self.rt.send(event)
        except RealtimeClosed:
            pass  # the session is being re-opened; the new one starts from the text so far

    def _interrupt(self) -> tuple[bool, list[dict[str, Any]]]:
        """The bookkeeping of a barge-in, done at once: whether to clear the caller's audio,
        and the Realtime events to send (truncate what was not heard, cancel the response)."""
        events: list[dict[str, Any]] = []
        clear = False
        item_id = self.playback.playing_item()
        if item_id is not None and item_id != "filler":
            clear = True
            audio_end_ms = self.playback.truncate_at_ms(item_id, time.monotonic())
            self.playback.clear()
            self._idle.set()
            self._turn_changed.set()
            events.append(
                {
                    "type": "conversation.item.truncate",
                    "item_id": item_id,
                    "content_index": 0,
                    "audio_end_ms": audio_end_ms,
                }
            )
            self.record.interrupted(item_id, audio_end_ms)
        if self._response_active:
            events.append({"type": "response.cancel"})
        return clear, events

    def _start_tool(self, name: str, call_id: str, arguments: str) -> None:
        tool = self.tools.get(name)

        async def run() -> str:
            if tool is None:
                return json.dumps({"error": f"unknown tool {name!r}"})
            return await tool.run(arguments, self._ctx)

        task = self._spawn(run())
        self._tools_in_flight += 1
        self._pending_calls.append((call_id, task))
        self.record.tool_started(name, call_id, arguments)
        # Recorded when it finishes, even if the call ends before the model hears the output
        # (a transfer ends a phone call as soon as the carrier took it).
        task.add_done_callback(lambda done: self._tool_done(call_id, done))

    def _tool_done(self, call_id: str, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.record.tool_finished(call_id, task.result())

    async def _answer_tools(self, calls: list[tuple[str, asyncio.Task[str]]]) -> None:
        for call_id, task in calls:
            output = await task
            self.rt.send(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": output},
                }
            )
        self._tools_in_flight -= len(calls)
        if self._end_requested is None:
            self._request_response()
        self._turn_changed.set()

    async def _played_out(self) -> None:
        """Return once the response on its way (a goodbye, "transferring you now") has
        finished streaming and the caller has heard it, or after ``PLAYOUT_WAIT_S``."""
        for _ in range(50):
            if not self._response_active and self._response_requested_at is None:
                break
            await asyncio.sleep(0.1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), PLAYOUT_WAIT_S)

    async def _after_playout(self, action: Any) -> None:
        await self._played_out()
        await action()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
