"""One Realtime session: client events in, GA server events out.

Transport-free: the server hands it parsed text frames and a ``send`` coroutine. Per-frame work
(``input_audio_buffer.append``) is kept lean: no model validation, one base64 decode, one VAD
pass. Recognition and synthesis run off the event loop (threads and subprocesses), so one
process holds many sessions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pydantic
from websockets.exceptions import ConnectionClosed

from callplane.audio import AudioFormat
from callplane.realtime.conformance import client_event_models, unknown_fields
from callplane.realtime.directives import exact_line
from callplane_standins.realtime_engine.context import (
    LOAD_REPLY_TRANSCRIPT,
    EngineContext,
    load_reply_clip,
)
from callplane_standins.realtime_engine.conversation import ConversationItems, Item
from callplane_standins.realtime_engine.protocol import (
    SEMANTIC_SILENCE_MS,
    RealtimeError,
    apply_session_update,
    check_format,
    check_max_output_tokens,
    check_modalities,
    default_session,
    input_audio_tokens,
    new_id,
    output_audio_tokens,
    text_tokens,
    usage,
)
from callplane_standins.realtime_engine.recognition import Recognition
from callplane_standins.realtime_engine.script import (
    Heard,
    Plan,
    PlannedCall,
    ToolResult,
    plan_reply,
    speakable,
)
from callplane_standins.realtime_engine.vad import EnergyVad, SpeechStarted, VadSettings

log = logging.getLogger("callplane.engine")

Send = Callable[[dict[str, Any]], Awaitable[None]]
MIN_COMMIT_MS = 100
# An append may carry up to 15 MiB of audio, as on OpenAI.
MAX_APPEND_BYTES = 15 * 1024 * 1024


@dataclass(slots=True)
class ResponseRun:
    """A response being generated."""

    id: str
    options: dict[str, Any]
    in_conversation: bool
    task: asyncio.Task[None] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    cancel_reason: Literal["turn_detected", "client_cancelled"] | None = None
    out_text_tokens: int = 0
    out_audio_ms: float = 0.0
    truncated_by_limit: bool = False


class RealtimeSession:
    """State and behaviour of one connection."""

    def __init__(self, ctx: EngineContext, send: Send, model: str) -> None:
        self.ctx = ctx
        self._send_frame = send
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.config = default_session(model)
        self._input_spec: dict[str, Any] = {}
        self._input_fmt = AudioFormat.from_session({"type": "audio/pcm"})
        self.conversation = ConversationItems()
        self.response: ResponseRun | None = None
        self._buffer = bytearray()
        self._buffer_start_ms = 0.0  # session clock at the buffer's first byte
        self._clock_ms = 0.0  # session audio clock: ms of input audio appended so far
        self._pending_item_id: str | None = None  # id announced by speech_started
        self._vad: EnergyVad | None = None
        self._audio_out_started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recognition_lock = asyncio.Lock()
        self.frames_in = 0
        self.errors_sent = 0
        probe = ctx.probe
        self._probe = probe.session() if probe is not None else None
        self._configure_input()

    # --- plumbing ----------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        event["event_id"] = new_id("event")
        if event["type"] == "error":
            self.errors_sent += 1
        if self.ctx.observer is not None:
            self.ctx.observer("out", event)
        await self._send_frame(event)

    async def start(self) -> None:
        await self.send({"type": "session.created", "session": copy.deepcopy(self.config)})

    async def close(self) -> None:
        """Stop everything the session runs; the peer is gone, so sends may fail quietly."""
        tasks = list(self._tasks)
        if self.response is not None and self.response.task is not None:
            tasks.append(self.response.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: background task failed", self.id, exc_info=task.exception())

    @property
    def input_format(self) -> AudioFormat:
        # Read on every append: parse the session's format once per change, not per frame.
        spec = self.config["audio"]["input"]["format"]
        if spec != self._input_spec:
            self._input_fmt = AudioFormat.from_session(spec)
            self._input_spec = dict(spec)
        return self._input_fmt

    @property
    def output_format(self) -> AudioFormat:
        return AudioFormat.from_session(self.config["audio"]["output"]["format"])

    def _configure_input(self) -> None:
        td = self.config["audio"]["input"]["turn_detection"]
        if td is None:
            self._vad = None
            return
        silence = td.get("silence_duration_ms")
        if td["type"] == "semantic_vad":
            silence = SEMANTIC_SILENCE_MS.get(td.get("eagerness") or "auto", 500)
        settings = VadSettings(
            threshold=td.get("threshold") if td.get("threshold") is not None else 0.5,
            prefix_padding_ms=td.get("prefix_padding_ms") or 300,
            silence_duration_ms=silence or 500,
        )
        self._vad = EnergyVad(settings, self.input_format.rate)

    # --- dispatch ----------------------------------------------------------------------------

    async def handle_text(self, raw: str) -> None:
        """Handle one text frame; every failure becomes an ``error`` event, never an exception."""
        self.frames_in += 1
        try:
            event = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            detail = (
                f"{exc.msg} at position {exc.pos}"
                if isinstance(exc, json.JSONDecodeError)
                else "nested too deeply"
            )
            await self.send(
                RealtimeError(
                    f"We could not parse the JSON body of your request: {detail}.",
                    code="invalid_json",
                ).event(None)
            )
            return
        if not isinstance(event, dict):
            await self.send(
                RealtimeError("An event must be a JSON object.", code="invalid_json").event(None)
            )
            return
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            if self.ctx.observer is not None:
                self.ctx.observer("in", event)
            await self._dispatch(event)
        except RealtimeError as err:
            await self.send(err.event(client_event_id))

    async def handle_binary(self, data: bytes) -> None:
        self.frames_in += 1
        await self.send(
            RealtimeError(
                f"Binary frames are not supported ({len(data)} bytes received); send JSON events "
                "as text frames and audio as base64 in input_audio_buffer.append.",
                code="invalid_frame",
            ).event(None)
        )

    async def _dispatch(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        if etype == "input_audio_buffer.append":  # hot path: no model validation
            await self._append(event)
            return
        model = client_event_models().get(etype) if isinstance(etype, str) else None
        handler = self._handlers.get(etype) if isinstance(etype, str) else None
        if model is None or handler is None:
            raise RealtimeError(
                f"Invalid value: {etype!r}. Supported values are: "
                + ", ".join(f"'{t}'" for t in self._handlers)
                + ".",
                param="type",
            )
        _validate(model, event)
        await handler(self, event)

    # --- session -----------------------------------------------------------------------------

    async def _session_update(self, event: dict[str, Any]) -> None:
        old_input = self.config["audio"]["input"]
        self.config = apply_session_update(
            self.config, event["session"], audio_started=self._audio_out_started
        )
        new_input = self.config["audio"]["input"]
        if (
            new_input["format"] != old_input["format"]
            or new_input["turn_detection"] != old_input["turn_detection"]
        ):
            self._configure_input()
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.config)})

    # --- input audio -------------------------------------------------------------------------

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError(
                "Missing required parameter: 'audio' (a base64 string).",
                code="missing_required_parameter",
                param="audio",
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError(
                "Invalid 'audio'. Expected base64-encoded audio data.", param="audio"
            ) from None
        if len(data) > MAX_APPEND_BYTES:
            raise RealtimeError(
                f"Invalid 'audio': {len(data)} bytes; one append may carry at most 15 MiB.",
                code="string_above_max_length",
                param="audio",
            )
        fmt = self.input_format
        whole = len(data) - len(data) % fmt.sample_width
        if not whole:
            return
        data = data[:whole]
        if self._probe is not None:
            assert self.ctx.probe is not None
            self.ctx.probe.on_append(self._probe, data)
        self._buffer.extend(data)
        self._clock_ms += fmt.duration_ms(whole)
        if self._vad is None:
            return
        for vad_event in self._vad.feed(fmt.decode(data)):
            if isinstance(vad_event, SpeechStarted):
                await self._speech_started(vad_event.audio_start_ms)
            else:
                await self._speech_stopped(vad_event.audio_end_ms)
        if not self._vad.speaking:
            self._trim_buffer()

    def _trim_buffer(self) -> None:
        """Outside speech, keep only what prefix padding may need, so silence costs no memory."""
        fmt = self.input_format
        keep_ms = (self._vad.settings.prefix_padding_ms if self._vad else 0) + 100
        excess = len(self._buffer) - fmt.nbytes_for_ms(keep_ms)
        if excess > 0:
            del self._buffer[:excess]
            self._buffer_start_ms += fmt.duration_ms(excess)

    async def _speech_started(self, audio_start_ms: int) -> None:
        # Drop audio before the turn's start (prefix padding is already in audio_start_ms).
        fmt = self.input_format
        drop = fmt.nbytes_for_ms(max(0.0, audio_start_ms - self._buffer_start_ms))
        if drop:
            del self._buffer[:drop]
            self._buffer_start_ms += fmt.duration_ms(drop)
        self._pending_item_id = new_id("item")
        if self._probe is not None:
            assert self.ctx.probe is not None
            self.ctx.probe.on_speech_started(self._probe)
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": self._pending_item_id,
            }
        )
        td = self.config["audio"]["input"]["turn_detection"] or {}
        run = self.response
        if run is not None and run.in_conversation and td.get("interrupt_response", True):
            await self._cancel(run, "turn_detected")

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self._pending_item_id or new_id("item")
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": audio_end_ms,
                "item_id": item_id,
            }
        )
        await self._commit(item_id)
        td = self.config["audio"]["input"]["turn_detection"] or {}
        if td.get("create_response", True) and self.response is None:
            await self._start_response({}, in_conversation=True)

    async def _input_commit(self, event: dict[str, Any]) -> None:
        ms = self.input_format.duration_ms(len(self._buffer))
        if ms < MIN_COMMIT_MS:
            raise RealtimeError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        await self._commit(self._pending_item_id or new_id("item"))

    async def _input_clear(self, event: dict[str, Any]) -> None:
        self._buffer.clear()
        self._buffer_start_ms = self._clock_ms
        self._pending_item_id = None
        if self._vad is not None:
            self._configure_input()  # forget a turn in progress
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, item_id: str) -> None:
        audio = bytes(self._buffer)
        self._buffer.clear()
        self._buffer_start_ms = self._clock_ms
        self._pending_item_id = None
        item = Item(
            data={
                "id": item_id,
                "type": "message",
                "object": "realtime.item",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
            audio=bytearray(audio),
            audio_format=self.input_format,
        )
        item.heard = asyncio.get_running_loop().create_future()
        previous = self.conversation.add(item)
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        await self._announce_item(item, previous)
        self._spawn(self._recognize(item))

    async def _recognize(self, item: Item) -> None:
        """Recognise a committed turn off the event loop; report it as a transcription."""
        assert item.heard is not None and item.audio_format is not None
        if self.ctx.settings.mode == "load":
            _resolve(item, Heard(phrase=None))
            return
        pcm = item.audio_format.decode(bytes(item.audio))
        try:
            async with self._recognition_lock:
                recognizer = await self.ctx.recognizers.acquire()
                try:
                    result = await asyncio.to_thread(
                        recognizer.recognize, pcm, item.audio_format.rate
                    )
                finally:
                    self.ctx.recognizers.release(recognizer)
        except BaseException:
            _resolve(item, Heard(phrase=None))
            raise
        _resolve(item, Heard(result.phrase, result.slots))
        if result.phrase is not None:
            item.data["content"][0]["transcript"] = result.text
        if self.config["audio"]["input"].get("transcription") is not None:
            await self._send_transcription(item, result)

    async def _send_transcription(self, item: Item, result: Recognition) -> None:
        if result.phrase is None:
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item.id,
                    "content_index": 0,
                    "error": {
                        "type": "transcription_error",
                        "code": "out_of_grammar",
                        "message": "The local engine recognises only the phrases of its script; "
                        "this turn matched none of them.",
                        "param": None,
                    },
                }
            )
            return
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": result.text,
                "usage": {"type": "duration", "seconds": round(item.audio_ms / 1000, 3)},
            }
        )

    # --- conversation items ------------------------------------------------------------------

    async def _announce_item(self, item: Item, previous: str | None) -> None:
        for etype in ("conversation.item.added", "conversation.item.done"):
            await self.send({"type": etype, "previous_item_id": previous, "item": item.wire()})

    async def _item_create(self, event: dict[str, Any]) -> None:
        data = copy.deepcopy(event["item"])
        data.setdefault("id", new_id("item"))
        data["object"] = "realtime.item"
        data["status"] = "completed"
        if data["type"] == "function_call":
            data.setdefault("call_id", new_id("call"))
        item = Item(data=data)
        if data["type"] == "message" and data["role"] == "user":
            item.heard = asyncio.get_running_loop().create_future()
        # Audio content sent inside an item is kept apart from the wire shape, as for turns.
        for part in data.get("content") or []:
            if part.get("type") == "input_audio" and part.get("audio"):
                try:
                    item.audio = bytearray(base64.b64decode(part.pop("audio"), validate=True))
                except (binascii.Error, ValueError):
                    raise RealtimeError(
                        "Invalid 'item.content.audio'. Expected base64-encoded audio data.",
                        param="item.content.audio",
                    ) from None
                item.audio_format = self.input_format
        previous = self.conversation.add(item, event.get("previous_item_id"))
        await self._announce_item(item, previous)
        if item.heard is not None:
            if item.audio:
                self._spawn(self._recognize(item))
            else:
                _resolve(item, await self._match_typed(data))

    async def _match_typed(self, data: Mapping[str, Any]) -> Heard:
        text = " ".join(
            str(p.get("text") or p.get("transcript") or "") for p in data.get("content") or []
        ).strip()
        if not text or self.ctx.settings.mode == "load":
            return Heard(phrase=None)
        recognizer = await self.ctx.recognizers.acquire()
        try:
            result = recognizer.match_text(text)
        finally:
            self.ctx.recognizers.release(recognizer)
        return Heard(result.phrase, result.slots)

    async def _item_delete(self, event: dict[str, Any]) -> None:
        self.conversation.delete(event["item_id"])
        await self.send({"type": "conversation.item.deleted", "item_id": event["item_id"]})

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.conversation.get(event["item_id"])
        await self.send({"type": "conversation.item.retrieved", "item": item.wire(with_audio=True)})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        item = self.conversation.get(event["item_id"])
        if item.data.get("type") != "message" or item.data.get("role") != "assistant":
            raise RealtimeError(
                f"Only assistant messages can be truncated; item {item.id} is a "
                f"{item.data.get('role') or item.data.get('type')} item.",
                param="item_id",
            )
        content = item.data.get("content") or []
        if event["content_index"] != 0 or not content or content[0].get("type") != "output_audio":
            raise RealtimeError(
                f"Item {item.id} has no audio content at content_index {event['content_index']}.",
                param="content_index",
            )
        end_ms = event["audio_end_ms"]
        run = self.response
        if run is not None and any(o.get("id") == item.id for o in run.output):
            await self._cancel(run, "client_cancelled")
        produced = item.audio_ms
        if end_ms < 0 or end_ms > produced:
            raise RealtimeError(
                f"Audio content of {math.floor(produced)}ms is already shorter than {end_ms}ms",
                code=None,
                param="audio_end_ms",
            )
        assert item.audio_format is not None
        del item.audio[item.audio_format.nbytes_for_ms(end_ms) :]
        transcript = content[0].get("transcript") or ""
        words = transcript.split()
        keep = math.floor(len(words) * (end_ms / produced)) if produced else 0
        content[0]["transcript"] = " ".join(words[:keep])
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item.id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )

    # --- responses ---------------------------------------------------------------------------

    async def _response_create(self, event: dict[str, Any]) -> None:
        if self.response is not None:
            raise RealtimeError(
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        options = copy.deepcopy(event.get("response") or {})
        check_modalities(options.get("output_modalities"), "response.output_modalities")
        check_max_output_tokens(options.get("max_output_tokens"), "response.max_output_tokens")
        out = (options.get("audio") or {}).get("output") or {}
        if "format" in out:
            check_format(out["format"], "response.audio.output.format")
        await self._start_response(options, in_conversation=options.get("conversation") != "none")

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        run = self.response
        wanted = event.get("response_id")
        if run is None or (wanted is not None and wanted != run.id):
            raise RealtimeError(
                "Cancellation failed: no active response found.",
                code="response_cancel_not_active",
            )
        await self._cancel(run, "client_cancelled")

    async def _cancel(
        self, run: ResponseRun, reason: Literal["turn_detected", "client_cancelled"]
    ) -> None:
        if run.task is None or run.task.done():
            return
        run.cancel_reason = reason
        run.task.cancel()
        await asyncio.wait([run.task])

    async def _start_response(self, options: dict[str, Any], *, in_conversation: bool) -> None:
        run = ResponseRun(id=new_id("resp"), options=options, in_conversation=in_conversation)
        self.response = run
        run.task = asyncio.ensure_future(self._run_response(run))
        run.task.add_done_callback(self._response_done)

    def _response_done(self, task: asyncio.Future[None]) -> None:
        """A response whose client went away mid-stream ends quietly; anything else is a bug."""
        if task.cancelled() or task.exception() is None:
            return
        if isinstance(task.exception(), ConnectionClosed):
            log.debug("session %s: the client left during a response", self.id)
        else:
            log.error("session %s: response failed", self.id, exc_info=task.exception())

    def _effective(self, run: ResponseRun, key: str) -> Any:
        return run.options[key] if run.options.get(key) is not None else self.config.get(key)

    def _response_audio(self, run: ResponseRun) -> tuple[AudioFormat, str]:
        out = (run.options.get("audio") or {}).get("output") or {}
        fmt = out.get("format") or self.config["audio"]["output"]["format"]
        voice = out.get("voice") or self.config["audio"]["output"]["voice"]
        return AudioFormat.from_session(fmt), str(voice)

    def _response_object(self, run: ResponseRun, status: str) -> dict[str, Any]:
        fmt, voice = self._response_audio(run)
        return {
            "id": run.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": copy.deepcopy(run.output),
            "conversation_id": self.conversation_id if run.in_conversation else None,
            "output_modalities": self._effective(run, "output_modalities"),
            "max_output_tokens": self._effective(run, "max_output_tokens"),
            "audio": {"output": {"format": fmt.to_session(), "voice": voice}},
            "metadata": run.options.get("metadata"),
            "usage": None,
        }

    async def _run_response(self, run: ResponseRun) -> None:
        status = "completed"
        details: dict[str, Any] | None = None
        try:
            await self.send(
                {"type": "response.created", "response": self._response_object(run, "in_progress")}
            )
            plan = await self._plan(run)
            if plan.say:
                await self._emit_message(run, plan.say)
            if plan.call and not run.truncated_by_limit:
                await self._emit_call(run, plan.call)
            if run.truncated_by_limit:
                status, details = (
                    "incomplete",
                    {"type": "incomplete", "reason": "max_output_tokens"},
                )
        except asyncio.CancelledError:
            status = "cancelled"
            details = {"type": "cancelled", "reason": run.cancel_reason or "client_cancelled"}
            await self._close_open_items(run)
        finally:
            if self.response is run:
                self.response = None
        done = self._response_object(run, status)
        done["status_details"] = details
        done["usage"] = self._usage(run)
        await self.send({"type": "response.done", "response": done})
        await self.send(
            {
                "type": "rate_limits.updated",
                "rate_limits": [
                    {"name": "requests", "limit": 10000, "remaining": 9999, "reset_seconds": 0.006},
                    {
                        "name": "tokens",
                        "limit": 2000000,
                        "remaining": 2000000 - done["usage"]["total_tokens"],
                        "reset_seconds": 0.0,
                    },
                ],
            }
        )

    async def _plan(self, run: ResponseRun) -> Plan:
        if self.ctx.settings.mode == "load":
            return Plan(say=LOAD_REPLY_TRANSCRIPT)
        tools = self._effective(run, "tools") or []
        declared = [t["name"] for t in tools if t.get("type") == "function"]
        choice = self._effective(run, "tool_choice")
        if isinstance(choice, dict):
            choice = choice.get("name")
        line = exact_line(run.options.get("instructions"))
        if line is not None:
            return Plan(say=speakable(line))
        trigger = await self._trigger(run)
        return plan_reply(self.ctx.script, trigger, declared, choice)

    async def _trigger(
        self, run: ResponseRun
    ) -> Heard | ToolResult | Literal["greeting", "followup"]:
        """What the response answers: the latest user turn or tool output since the last reply."""
        if run.options.get("input") is not None:
            items = [Item(data=d) for d in run.options["input"]]
            for item in items:
                if item.data.get("type") == "message" and item.data.get("role") == "user":
                    item.heard = asyncio.get_running_loop().create_future()
                    _resolve(item, await self._match_typed(item.data))
        else:
            items = self.conversation.items()
        if not any(
            i.data.get("role") == "user" or i.data.get("type") == "function_call_output"
            for i in items
        ):
            return "greeting"
        for item in reversed(items):
            data = item.data
            if data.get("type") == "function_call_output":
                call = next(
                    (
                        i.data
                        for i in items
                        if i.data.get("type") == "function_call"
                        and i.data.get("call_id") == data["call_id"]
                    ),
                    None,
                )
                args: dict[str, Any] = {}
                if call is not None:
                    with contextlib.suppress(json.JSONDecodeError, TypeError):
                        parsed = json.loads(call.get("arguments") or "{}")
                        args = parsed if isinstance(parsed, dict) else {}
                return ToolResult(
                    name=call["name"] if call else "", arguments=args, output=data["output"]
                )
            if (
                data.get("type") == "message"
                and data.get("role") == "user"
                and item.heard is not None
            ):
                # Shielded: a response cancelled by a barge-in must not cancel the turn's
                # recognition result, which the next response (and the recogniser) still use.
                return await asyncio.shield(item.heard)
            if data.get("type") == "message" and data.get("role") == "assistant":
                return "followup"
            if data.get("type") == "function_call":
                return "followup"
        return "followup"

    async def _add_output(self, run: ResponseRun, item: Item) -> None:
        run.output.append(item.data)
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": run.id,
                "output_index": len(run.output) - 1,
                "item": item.wire(),
            }
        )
        if run.in_conversation:
            previous = self.conversation.add(item)
            await self.send(
                {
                    "type": "conversation.item.added",
                    "previous_item_id": previous,
                    "item": item.wire(),
                }
            )

    async def _finish_output(self, run: ResponseRun, item: Item, status: str) -> None:
        item.data["status"] = status
        index = next(i for i, o in enumerate(run.output) if o is item.data)
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": run.id,
                "output_index": index,
                "item": item.wire(),
            }
        )
        if run.in_conversation:
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": None, "item": item.wire()}
            )

    async def _emit_message(self, run: ResponseRun, text: str) -> None:
        modalities = self._effective(run, "output_modalities") or ["audio"]
        audio_mode = "audio" in modalities
        text = self._limit_text(run, text, audio_mode)
        item = Item(
            data={
                "id": new_id("item"),
                "type": "message",
                "object": "realtime.item",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        )
        await self._add_output(run, item)
        index = len(run.output) - 1
        ids = {"response_id": run.id, "item_id": item.id, "output_index": index, "content_index": 0}
        if audio_mode:
            await self._stream_audio(run, item, ids, text)
        else:
            await self._stream_text(run, item, ids, text)
        await self._finish_output(run, item, "completed")

    async def _stream_text(
        self, run: ResponseRun, item: Item, ids: dict[str, Any], text: str
    ) -> None:
        item.data["content"] = [{"type": "output_text", "text": ""}]
        await self.send(
            {"type": "response.content_part.added", **ids, "part": {"type": "text", "text": ""}}
        )
        sent = ""
        for word in _words(text):
            sent += word
            item.data["content"][0]["text"] = sent
            run.out_text_tokens = text_tokens(sent)
            await self.send({"type": "response.output_text.delta", **ids, "delta": word})
            await asyncio.sleep(0)
        await self.send({"type": "response.output_text.done", **ids, "text": text})
        await self.send(
            {"type": "response.content_part.done", **ids, "part": {"type": "text", "text": text}}
        )

    async def _stream_audio(
        self, run: ResponseRun, item: Item, ids: dict[str, Any], text: str
    ) -> None:
        fmt, voice = self._response_audio(run)
        item.audio_format = fmt
        item.data["content"] = [{"type": "output_audio", "transcript": ""}]
        await self.send(
            {
                "type": "response.content_part.added",
                **ids,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        if self.ctx.settings.mode == "load":
            audio = load_reply_clip(fmt)
        else:
            pcm = await self.ctx.synthesizer.synthesize(text, voice, fmt.rate)
            audio = fmt.encode(pcm)
        if run.truncated_by_limit:  # keep only the audio the token budget allows
            audio = audio[: fmt.nbytes_for_ms(run.out_audio_ms)]
        self._audio_out_started = True
        words = _words(text)
        total_ms = fmt.duration_ms(len(audio)) or 1.0
        chunk = fmt.nbytes_for_ms(self.ctx.settings.chunk_ms)
        spoken_words = 0
        for start in range(0, len(audio), chunk):
            piece = audio[start : start + chunk]
            item.audio.extend(piece)
            produced_ms = fmt.duration_ms(len(item.audio))
            due = min(len(words), math.ceil(len(words) * produced_ms / total_ms))
            if due > spoken_words:
                delta = "".join(words[spoken_words:due])
                spoken_words = due
                item.data["content"][0]["transcript"] += delta
                await self.send(
                    {"type": "response.output_audio_transcript.delta", **ids, "delta": delta}
                )
            if self._probe is not None:
                assert self.ctx.probe is not None
                piece = self.ctx.probe.stamp_out(self._probe, piece)
            await self.send(
                {
                    "type": "response.output_audio.delta",
                    **ids,
                    "delta": base64.b64encode(piece).decode("ascii"),
                }
            )
            run.out_audio_ms = produced_ms
            await asyncio.sleep(fmt.duration_ms(len(piece)) / 1000 / self.ctx.settings.pace)
        item.data["content"][0]["transcript"] = text
        run.out_text_tokens += text_tokens(text)
        await self.send({"type": "response.output_audio.done", **ids})
        await self.send(
            {"type": "response.output_audio_transcript.done", **ids, "transcript": text}
        )
        await self.send(
            {
                "type": "response.content_part.done",
                **ids,
                "part": {"type": "audio", "transcript": text},
            }
        )

    def _limit_text(self, run: ResponseRun, text: str, audio_mode: bool) -> str:
        """Cut the reply to ``max_output_tokens`` (estimated), marking the response incomplete."""
        limit = self._effective(run, "max_output_tokens")
        if not isinstance(limit, int):
            return text
        words = _words(text)
        kept: list[str] = []
        for word in words:
            candidate = "".join([*kept, word])
            cost = text_tokens(candidate)
            if audio_mode:  # roughly: espeak speaks ~ 2.5 words per second
                cost += output_audio_tokens(len([*kept, word]) * 400)
            if cost > limit:
                break
            kept.append(word)
        if len(kept) == len(words):
            return text
        run.truncated_by_limit = True
        run.out_audio_ms = len(kept) * 400.0
        return "".join(kept).rstrip()

    async def _emit_call(self, run: ResponseRun, call: PlannedCall) -> None:
        arguments = json.dumps(call.arguments)
        item = Item(
            data={
                "id": new_id("item"),
                "type": "function_call",
                "object": "realtime.item",
                "status": "in_progress",
                "name": call.name,
                "call_id": new_id("call"),
                "arguments": "",
            }
        )
        await self._add_output(run, item)
        ids = {
            "response_id": run.id,
            "item_id": item.id,
            "output_index": len(run.output) - 1,
            "call_id": item.data["call_id"],
        }
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            if piece:
                await self.send(
                    {"type": "response.function_call_arguments.delta", **ids, "delta": piece}
                )
        item.data["arguments"] = arguments
        run.out_text_tokens += text_tokens(arguments)
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "arguments": arguments,
                "name": call.name,
            }
        )
        await self._finish_output(run, item, "completed")

    async def _close_open_items(self, run: ResponseRun) -> None:
        """After a cancel: close what was in flight, with what had been produced."""
        for data in run.output:
            if data.get("status") != "in_progress":
                continue
            item = (self.conversation.find(data["id"]) if run.in_conversation else None) or Item(
                data=data
            )
            index = run.output.index(data)
            content = data.get("content") or []
            if content and content[0].get("type") == "output_audio":
                ids = {
                    "response_id": run.id,
                    "item_id": data["id"],
                    "output_index": index,
                    "content_index": 0,
                }
                transcript = content[0].get("transcript") or ""
                run.out_text_tokens += text_tokens(transcript)
                await self.send({"type": "response.output_audio.done", **ids})
                await self.send(
                    {
                        "type": "response.output_audio_transcript.done",
                        **ids,
                        "transcript": transcript,
                    }
                )
                await self.send(
                    {
                        "type": "response.content_part.done",
                        **ids,
                        "part": {"type": "audio", "transcript": transcript},
                    }
                )
            await self._finish_output(run, item, "incomplete")

    def _usage(self, run: ResponseRun) -> dict[str, Any]:
        in_text = text_tokens(self.config.get("instructions") or "")
        in_audio = 0
        for item in self.conversation:
            if item.data.get("role") == "user" and item.audio:
                in_audio += input_audio_tokens(item.audio_ms)
            for part in item.data.get("content") or []:
                in_text += text_tokens(str(part.get("text") or part.get("transcript") or ""))
            in_text += text_tokens(str(item.data.get("output") or item.data.get("arguments") or ""))
        return usage(in_text, in_audio, run.out_text_tokens, output_audio_tokens(run.out_audio_ms))

    _handlers: ClassVar[dict[str, Callable[[RealtimeSession, dict[str, Any]], Awaitable[None]]]] = {
        "session.update": _session_update,
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _input_commit,
        "input_audio_buffer.clear": _input_clear,
        "conversation.item.create": _item_create,
        "conversation.item.delete": _item_delete,
        "conversation.item.retrieve": _item_retrieve,
        "conversation.item.truncate": _item_truncate,
        "response.create": _response_create,
        "response.cancel": _response_cancel,
    }


def _resolve(item: Item, heard: Heard) -> None:
    """Give a user turn its recognition result, once: a turn can be resolved from more than
    one path (recognition, its failure, the session closing), and only the first counts."""
    if item.heard is not None and not item.heard.done():
        item.heard.set_result(heard)


def _words(text: str) -> list[str]:
    """Split into words that keep their trailing space, so deltas concatenate to the text."""
    parts = text.split(" ")
    return [w for w in (p + " " for p in parts[:-1])] + ([parts[-1]] if parts[-1] else [])


def _validate(model: type[pydantic.BaseModel], event: Mapping[str, Any]) -> None:
    """Validate a client event as OpenAI does: wrong types and unknown fields are errors."""
    try:
        model.model_validate(dict(event))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        if first["type"] == "missing":
            raise RealtimeError(
                f"Missing required parameter: '{param}'.",
                code="missing_required_parameter",
                param=param,
            ) from None
        raise RealtimeError(f"Invalid '{param}': {first['msg']}.", param=param) from None
    unknown = unknown_fields(model, event)
    if unknown:
        raise RealtimeError(
            f"Unknown parameter: '{unknown[0]}'.", code="unknown_parameter", param=unknown[0]
        )
