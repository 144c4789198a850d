"""One simulated call's state machine: from ringing through its TwiML to its final status.

An inbound call rings a number and fetches its voice webhook; an outbound-api call rings the
callee (``dialing.py``) and, once answered, fetches or runs its TwiML. Both then run the
document's verbs (``verbs.py``) until the TwiML ends, the caller or the REST API hangs up, or a
redirect replaces the document, and finish with the status Twilio would report. Audio, stream
protocol, callbacks and webhooks live in their own modules; this one only sequences them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callplane_standins.twilio_simulator import caller as caller_mod
from callplane_standins.twilio_simulator.call_audio import CallAudio, CallerLine
from callplane_standins.twilio_simulator.callee import Callee
from callplane_standins.twilio_simulator.caller import Step
from callplane_standins.twilio_simulator.control import (
    HangupRequest,
    PendingControl,
    RedirectRequest,
)
from callplane_standins.twilio_simulator.dialing import detect_machine, ringing
from callplane_standins.twilio_simulator.state import (
    CallResource,
    PhoneNumberRecord,
    utcnow,
)
from callplane_standins.twilio_simulator.status_callbacks import StatusCallbacks, call_params
from callplane_standins.twilio_simulator.timeline import (
    CallResult,
    HungUpBy,
    Timeline,
    TimelineEvent,
)
from callplane_standins.twilio_simulator.twiml import (
    Hangup,
    Instruction,
    Reject,
    TwimlError,
    parse_twiml,
)
from callplane_standins.twilio_simulator.verbs import run_verb
from callplane_standins.twilio_simulator.webhooks import WebhookError

if TYPE_CHECKING:
    from callplane_standins.twilio_simulator.carrier import Carrier

__all__ = ["MAX_ERRORS", "LiveCall"]

log = logging.getLogger("callplane.twilio")

MAX_ERRORS = 50


class LiveCall:
    """One call in progress (and, once over, its result). Created by :class:`Carrier`.

    ``call_sid`` is known as soon as the call exists, so a test can act on a live call (REST
    update, hang-up) while :meth:`wait` is pending.
    """

    def __init__(
        self,
        carrier: Carrier,
        record: CallResource,
        auth_token: str,
        script: Sequence[Step],
        speech: Mapping[tuple[str, str], bytes],
        *,
        status_callback: str,
        status_callback_method: str,
        status_events: frozenset[str],
        max_duration_s: float,
        number: PhoneNumberRecord | None,
    ) -> None:
        self.carrier = carrier
        self.record = record
        self.call_sid = record.sid
        self.auth_token = auth_token
        self._script = list(script)
        self._speech = speech
        self._max_duration_s = max_duration_s
        self._number = number

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._t0 = loop.time()
        self.timeline = Timeline()
        self.errors: list[str] = []
        self._result: asyncio.Future[CallResult] = loop.create_future()
        self.control = PendingControl()
        self.audio = CallAudio(self, self.control)
        self.callbacks = StatusCallbacks(
            self._send,
            auth_token,
            self,
            url=status_callback,
            method=status_callback_method,
            events=status_events,
        )
        self._ended_event = asyncio.Event()
        self._answered = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.hung_up_by: HungUpBy | None = None
        self._wav_path: Path | None = None

    # ---- public API -------------------------------------------------------------------

    @property
    def placed_at(self) -> float:
        """The event loop's clock (``time.monotonic()`` by default) when the call was placed:
        timeline times are milliseconds after it, so they can be compared with other parts'
        clocks in the same process."""
        return self._t0

    def now_ms(self) -> float:
        """Milliseconds since the call was placed."""
        return round((self._loop.time() - self._t0) * 1000.0, 1)

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def live(self) -> bool:
        return not self._result.done()

    async def wait(self, timeout_s: float | None = None) -> CallResult:
        """The call's result, once it has ended and its status callbacks were delivered."""
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(self._result)

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        """Until the call has its final status (callbacks may still be in flight)."""
        async with asyncio.timeout(timeout_s):
            await self._ended_event.wait()

    def hang_up(self, by: HungUpBy = "rest", reason: str = "") -> None:
        """End the call (``Status=completed`` from REST, or the caller)."""
        self.control.request(HangupRequest(by, reason or f"hung up by {by}"))

    def redirect(
        self, instructions: list[Instruction] | None = None, url: str = "", method: str = "POST"
    ) -> None:
        """Replace the running TwiML (REST ``Calls`` update with ``Twiml`` or ``Url``)."""
        if instructions is None and not url:
            raise ValueError("redirect needs TwiML instructions or a URL")
        self.control.request(RedirectRequest(instructions, url, method))

    def note(self, kind: str, **detail: object) -> None:
        """Add a timeline event at the current call time."""
        self.timeline.events.append(TimelineEvent(self.now_ms(), kind, dict(detail)))

    def error(self, message: str) -> None:
        """Record a problem in the result (capped; never raises)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("… further errors suppressed")
        self.note("error", message=message)
        log.info("call %s: %s", self.call_sid, message)

    # ---- running the call ---------------------------------------------------------------

    async def run_inbound(self) -> None:
        """Ring the number: webhook, TwiML, conversation, hang-up."""
        self.callbacks.start()
        try:
            number = self._number
            assert number is not None
            self._status_event("initiated", "initiated")
            await self._set_status("ringing", "ringing")
            if number.trunk_sid:
                self.error("the number routes to a SIP trunk, which the simulator does not run")
                await self._finish("failed", "remote")
                return
            if not number.voice_url:
                self.error(f"number {number.phone_number} has no VoiceUrl")
                await self._finish("failed", "remote")
                return
            got = await self.control.wait_or_interrupt(
                self._fetch_twiml(number.voice_url, number.voice_method, "ringing")
            )
            await self._after_twiml(got)
        except Exception as exc:
            log.exception("call %s crashed", self.call_sid)
            self.error(f"simulator: call crashed: {exc!r}")
            if not self._result.done():
                await self._finish("failed", "remote")
        finally:
            await self._close()

    async def run_outbound(
        self,
        url: str,
        method: str,
        instructions: list[Instruction] | None,
        callee: Callee | None,
        ring_timeout_s: float,
        machine_detection: str | None = None,
    ) -> None:
        """An outbound-api call: ring the callee; if it answers, detect a machine when asked
        to, then run the call's TwiML with the callee's script as the far party."""
        self.callbacks.start()
        try:
            self._status_event("initiated", "initiated")
            if callee is not None and callee.kind == "busy":
                self.note("busy", to=self.record.to)
                await self._finish("busy", None)
                return
            await self._set_status("ringing", "ringing")
            ring = ringing(callee, self.carrier.ring_s, ring_timeout_s)
            await self.control.wait_or_interrupt(asyncio.sleep(ring.ring_s))
            if self.control.pending is not None:
                await self._finish("canceled", "rest")
                return
            if not ring.answered or callee is None:
                self.note("no_answer", to=self.record.to)
                await self._finish("no-answer", None)
                return
            self.note("picked_up", callee=callee.kind)
            if machine_detection:
                await self._detect_machine(callee, machine_detection)
            if instructions is None:
                got = await self.control.wait_or_interrupt(
                    self._fetch_twiml(url, method, "in-progress")
                )
            else:
                got = instructions
            await self._after_twiml(got)
        except Exception as exc:
            log.exception("call %s crashed", self.call_sid)
            self.error(f"simulator: call crashed: {exc!r}")
            if not self._result.done():
                await self._finish("failed", "remote")
        finally:
            await self._close()

    async def _detect_machine(self, callee: Callee, machine_detection: str) -> None:
        """Twilio's AMD: decide who answered before the TwiML is fetched."""
        detected = detect_machine(callee, machine_detection, self._speech)
        await asyncio.sleep(detected.decision_s)
        self.record = self.record.model_copy(update={"answered_by": detected.answered_by})
        self.carrier.store.put_call(self.record)
        self.note("answered_by", answered_by=detected.answered_by)

    async def _after_twiml(self, got: object) -> None:
        pending = self.control.pending
        if isinstance(pending, HangupRequest):
            await self._finish("canceled", pending.by)
            return
        if not isinstance(got, list):
            await self._finish("failed", "remote")
            return
        instructions: list[Instruction] = got
        if instructions and isinstance(instructions[0], Reject):
            reason = instructions[0].reason
            self.note("reject", reason=reason)
            await self._finish("busy" if reason == "busy" else "no-answer", "remote")
            return
        await self._converse(instructions)

    async def _converse(self, instructions: list[Instruction]) -> None:
        """The answered call: run documents until one ends the call or a hang-up arrives."""
        self._answered = True
        self.timeline.answered_ms = self.now_ms()
        await self._set_status("in-progress", "answered")
        clock = self._spawn(self.audio.run_clock())
        script = self._spawn(self._run_script())
        watchdog = self._spawn(self._watchdog())
        doc: list[Instruction] | None = instructions
        ended_by: HungUpBy = "remote"
        while doc is not None:
            ended_here = False
            for verb in doc:
                if self.control.pending is not None:
                    break
                if isinstance(verb, Hangup):
                    self.note("hangup_verb")
                    ended_here = True
                    break
                if isinstance(verb, Reject):
                    self.note("reject", reason=verb.reason)
                    ended_here = True
                    break
                await run_verb(self, verb)
            pending = self.control.take()
            if isinstance(pending, HangupRequest):
                ended_by = pending.by
                self.note("hangup", by=pending.by, reason=pending.reason)
                break
            if isinstance(pending, RedirectRequest) and not ended_here:
                self.note("redirect", url=pending.url, inline=pending.instructions is not None)
                if pending.instructions is not None:
                    doc = pending.instructions
                else:
                    doc = await self._fetch_twiml(pending.url, pending.method, "in-progress")
                continue
            doc = None
        self.control.ended = True
        for task in (clock, script, watchdog):
            task.cancel()
        # Release anything waiting on a slot.
        self.audio.release()
        await self._finish("completed", ended_by)

    async def _run_script(self) -> None:
        line = CallerLine(self.audio, self.control, self)
        try:
            hung_up = await caller_mod.run_script(self._script, line, self._speech)
        except asyncio.CancelledError:
            return
        if not hung_up:
            self.note("caller_script_done")

    async def _watchdog(self) -> None:
        await asyncio.sleep(self._max_duration_s)
        self.note("max_duration", seconds=self._max_duration_s)
        self.control.request(
            HangupRequest("caller", f"max_duration_s={self._max_duration_s:g} reached")
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- status and webhooks ------------------------------------------------------------

    async def _send(self, url: str, method: str, params: Mapping[str, str], token: str) -> str:
        # Through the carrier's http_request, looked up on every request: it is the one
        # place every webhook of every call goes through, and tests replace it there.
        return await self.carrier.http_request(url, method, params, token)

    def _status_event(self, event: str, status: str) -> None:
        self.callbacks.call_progress(event, status, self.record, self._number)

    async def _set_status(self, status: str, event: str | None = None) -> None:
        rec = self.record
        now = utcnow()
        updated = rec.model_copy(update={"status": status, "date_updated": now})
        if status == "in-progress" and rec.start_time is None:
            updated.start_time = now
        self.record = updated
        self.carrier.store.put_call(updated)
        self.note("status", status=status)
        await self.carrier.store.save_async()
        if event is not None:
            self._status_event(event, status)

    async def _fetch_twiml(self, url: str, method: str, status: str) -> list[Instruction] | None:
        params = call_params(self.record, self._number, status)
        self.note("webhook", url=url, method=method)
        try:
            body = await self.carrier.http_request(url, method, params, self.auth_token)
        except WebhookError as exc:
            self.error(f"11200: HTTP retrieval failure for {url}: {exc}")
            return None
        try:
            return parse_twiml(body)
        except TwimlError as exc:
            self.error(f"12100: document parse failure for {url}: {exc}")
            return None

    # ---- the end ------------------------------------------------------------------------

    async def _finish(self, status: str, by: HungUpBy | None) -> None:
        if self._result.done():
            return
        self.control.ended = True
        self.hung_up_by = by
        self.timeline.ended_ms = self.now_ms()
        rec = self.record
        now = utcnow()
        duration = 0
        if self._answered and self.timeline.answered_ms is not None:
            duration = round((self.timeline.ended_ms - self.timeline.answered_ms) / 1000)
        self.record = rec.model_copy(
            update={
                "end_time": now,
                "duration": duration,
                "hung_up_by": by,
                "transferred_to": rec.transferred_to,
            }
        )
        wav_path: Path | None = None
        if self._answered and self.audio.recorded:
            wav_path = self.carrier.recordings_dir / f"{self.call_sid}.wav"
            await self.audio.write_recording(wav_path)
        self._wav_path = wav_path
        await self._set_status(status, "completed")
        self._ended_event.set()

    async def _close(self) -> None:
        """Deliver the remaining callbacks, stop the call's tasks, publish the result."""
        await self.callbacks.close()
        for task in list(self._tasks):
            task.cancel()
        if not self._result.done():
            self._result.set_result(self._make_result())
        # What is left is the result (timeline, WAV path): the audio and the caller's
        # rendered speech are not needed any more.
        self.audio.forget()
        self._speech = {}

    def _make_result(self) -> CallResult:
        answered = self.timeline.answered_ms
        ended = self.timeline.ended_ms if self.timeline.ended_ms is not None else self.now_ms()
        return CallResult(
            call_sid=self.call_sid,
            status=self.record.status,
            duration_s=0.0 if answered is None else round((ended - answered) / 1000, 3),
            transferred_to=self.record.transferred_to,
            hung_up_by=self.hung_up_by,
            timeline=self.timeline,
            wav_path=self._wav_path,
            errors=list(self.errors),
            direction=self.record.direction,
            from_=self.record.from_number,
            to=self.record.to,
        )
