"""Named test doubles for the bridge's core, so its rules can be tested without a network.

* :class:`FakeSocket`: a :class:`~callplane.transports.socket.MessageSocket` in memory. The
  test plays the peer: it delivers messages, closes, and congests or drains the socket.
* :class:`FakeRealtime`: a Realtime server for :class:`~callplane.realtime.client.
  RealtimeClient`'s ``dial``: every session is a :class:`FakeSocket`; the test reads the
  client events a session got (each checked against the ``openai`` SDK's GA models) and
  injects server events.
* :class:`FakeTransport`: a :class:`~callplane.transports.base.Transport` that records what
  was played, cleared, hung up and transferred, and lets the test send caller audio, mark
  echoes, keypad presses and the end of the call; a test decides what a transfer moves, or
  that the carrier refuses it.
* :class:`FakeCall`: a tool's :class:`~callplane.tools.CallContext` that records what the tool
  did to the call.
* :class:`RecordingControl`: Twilio's REST call control, recording hang-ups and transfers
  instead of calling Twilio (or refusing transfers, as Twilio can).
* :class:`RecordingHandler`: a :class:`~callplane.transports.base.TransportHandler` that keeps
  every event a real transport delivers (or, with ``audio_error``, fails on audio as a broken
  handler would).
* :class:`BrokenTransport`: a :class:`FakeTransport` whose ``listen`` raises, for the
  conversation's handling of its own faults.
* :class:`FakeClock`: stands in for the ``time`` module of the code under test, so positions
  in played audio are exact.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from callplane.realtime.conformance import validate_client_event
from callplane.tools import CallContext, TransferFailed
from callplane.transports.base import (
    AudioIn,
    CallEnded,
    DtmfIn,
    MarkIn,
    TransferOutcome,
    TransportEvent,
    TransportHandler,
)
from callplane.transports.socket import MessageSocket, SocketBase
from callplane.transports.twilio import CallControl, TwilioRestSettings


class FakeSocket(SocketBase):
    """A :class:`~callplane.transports.socket.MessageSocket` whose peer is the test.

    ``written`` is what reached the peer, in order; while the test keeps the socket congested
    (:meth:`congest`), sends are held by the socket's flow control as a real socket's are,
    and :meth:`drain` lets them through.
    """

    def __init__(self) -> None:
        super().__init__(self._write)
        self.written: list[str] = []
        self.closed_with: int | None = None  # the code this side closed with

    # ---- MessageSocket -----------------------------------------------------------------------

    async def close(self, code: int = 1000) -> None:
        if not self._gone:
            self.closed_with = code
            self._gone_now(code, "")

    def _write(self, text: str | bytes) -> None:
        self.written.append(text if isinstance(text, str) else text.decode("utf-8"))

    def _gone_now(self, code: int | None, reason: str) -> None:
        self._gone = True
        self._flow.discard()
        self.inbox.peer_gone(code, reason)

    # ---- the peer, played by the test --------------------------------------------------------

    def deliver(self, message: str | bytes | dict[str, Any]) -> None:
        """A text message from the peer (a dict is sent as JSON)."""
        if isinstance(message, dict):
            message = json.dumps(message)
        self.inbox.text(message.encode("utf-8") if isinstance(message, str) else message)

    def deliver_binary(self, data: bytes) -> None:
        self.inbox.binary(data)

    def peer_close(self, code: int | None = 1000, reason: str = "") -> None:
        """The peer closes the connection (None: it just went away)."""
        if not self._gone:
            self._gone_now(code, reason)

    def congest(self) -> None:
        """The peer stops reading: the socket's writes pause."""
        self._flow.pause_writing()

    def drain(self) -> None:
        """The peer reads again: what was held is written, in order."""
        self._flow.resume_writing()

    def written_json(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.written]


def _check(socket: MessageSocket) -> MessageSocket:
    """mypy checks here that FakeSocket is a MessageSocket."""
    return socket


_check(FakeSocket())


@dataclass
class FakeRealtime:
    """A Realtime server in memory. Pass :meth:`dial` to ``RealtimeClient`` (or
    ``Conversation(dial=...)``); each connection is a new session (:attr:`sessions`).

    ``refuse`` connections are refused first (as a server that is down). Every client event
    a session gets is checked against the ``openai`` SDK's GA models; the first that does
    not conform fails the test.
    """

    refuse: int = 0
    sessions: list[FakeSocket] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    check_events: bool = True

    async def dial(self, url: str, headers: dict[str, str]) -> MessageSocket:
        from callplane.realtime.client import RealtimeClosed

        self.urls.append(url)
        if self.refuse > 0:
            self.refuse -= 1
            raise RealtimeClosed(None, f"handshake with {url} failed: refused by the test")
        socket = FakeSocket()
        self.sessions.append(socket)
        return socket

    @property
    def session(self) -> FakeSocket:
        """The latest session."""
        assert self.sessions, "no Realtime session was opened"
        return self.sessions[-1]

    def send(self, event: dict[str, Any], session: int = -1) -> None:
        """A server event to a session (the latest by default)."""
        self.sessions[session].deliver(event)

    def received(self, session: int = -1, *, appends: bool = False) -> list[dict[str, Any]]:
        """The client events a session got, in order; appends left out unless asked for."""
        events = self.sessions[session].written_json()
        if self.check_events:
            for event in events:
                validate_client_event(event)
        if not appends:
            events = [e for e in events if e["type"] != "input_audio_buffer.append"]
        return events

    def types(self, session: int = -1) -> list[str]:
        return [e["type"] for e in self.received(session)]


Played = tuple[Literal["play"], str, str] | tuple[Literal["clear"]]


class FakeTransport:
    """A :class:`~callplane.transports.base.Transport` in memory (µ-law, 8 bytes per ms).

    ``log`` is what the core did to the far end, in order: ``("play", payload, mark)`` and
    ``("clear",)``. Hanging up ends the call, as Twilio's stream does. A transfer is recorded
    in ``transfers`` and moves ``transfer_outcome``: ``line_moved`` (the default) ends the
    call as Twilio's stream does, ``participant_moved`` leaves it running (a hybrid room). With
    ``transfer_refusal`` set, the carrier refuses every transfer with that reason instead.
    """

    audio_format: Literal["audio/pcmu"] = "audio/pcmu"
    bytes_per_ms = 8.0

    def __init__(self) -> None:
        self.handler: TransportHandler | None = None
        self.log: list[Played] = []
        self.hang_ups = 0
        self.transfers: list[str] = []
        self.transfer_outcome: TransferOutcome = "line_moved"
        self.transfer_refusal: str | None = None
        self.listened = asyncio.Event()

    # ---- Transport ---------------------------------------------------------------------------

    def listen(self, handler: TransportHandler | None) -> None:
        self.handler = handler
        if handler is not None:
            self.listened.set()

    def play(self, payload_b64: str, mark: str) -> None:
        self.log.append(("play", payload_b64, mark))

    def clear(self) -> None:
        self.log.append(("clear",))

    async def hang_up(self) -> None:
        self.hang_ups += 1
        self.end("stream_closed")

    async def transfer(self, to: str) -> TransferOutcome:
        if self.transfer_refusal is not None:
            raise TransferFailed(self.transfer_refusal)
        self.transfers.append(to)
        if self.transfer_outcome == "line_moved":
            self.end("stream_closed")
        return self.transfer_outcome

    # ---- the far end, played by the test -----------------------------------------------------

    @property
    def marks(self) -> list[str]:
        """The marks sent, in order."""
        return [entry[2] for entry in self.log if entry[0] == "play"]

    @property
    def clears(self) -> int:
        return sum(1 for entry in self.log if entry[0] == "clear")

    def _handler(self) -> TransportHandler:
        assert self.handler is not None, "nobody listens to the transport"
        return self.handler

    def audio(self, payload_b64: bytes = b"//////////8=") -> None:
        self._handler().on_audio(payload_b64)

    def echo(self, mark: str) -> None:
        self._handler().on_mark(mark)

    def press(self, digit: str) -> None:
        self._handler().on_dtmf(digit)

    def end(self, reason: str = "caller_hung_up") -> None:
        if self.handler is not None:
            self.handler.on_end(reason)


class BrokenTransport(FakeTransport):
    """A :class:`FakeTransport` that raises ``error`` when the conversation starts listening:
    a fault on this side, in the middle of a call that has opened its Realtime session."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def listen(self, handler: TransportHandler | None) -> None:
        if handler is not None:
            raise self.error
        super().listen(handler)


class FakeCall(CallContext):
    """A tool's call: records a hang-up and the transfer; ``transfer_refusal`` makes every
    transfer fail with that reason. A transfer dials ``dialled`` (``to`` itself by default)."""

    def __init__(self, *, transfer_refusal: str | None = None, dialled: str | None = None) -> None:
        self.hung_up = False
        self.transferred: str | None = None
        self.transfer_refusal = transfer_refusal
        self.dialled = dialled

    async def hang_up(self) -> None:
        self.hung_up = True

    async def transfer(self, to: str) -> str:
        if self.transfer_refusal is not None:
            raise TransferFailed(self.transfer_refusal)
        self.transferred = to
        return self.dialled or to


class RecordingControl(CallControl):
    """Twilio's REST call control, recording the hang-up and transfers instead of calling
    Twilio; with ``refuse_transfers`` set, a transfer fails as Twilio's REST API can."""

    def __init__(self, call_sid: str, *, refuse_transfers: bool = False) -> None:
        super().__init__(TwilioRestSettings("AC" + "0" * 32, "token"), call_sid)
        self.hung_up = asyncio.Event()
        self.transfers: list[str] = []
        self.refuse_transfers = refuse_transfers

    async def hang_up(self) -> None:
        self.hung_up.set()

    async def transfer(self, to: str) -> None:
        if self.refuse_transfers:
            raise RuntimeError(f"HTTP 400: Call {self.call_sid} is not in-progress (test)")
        self.transfers.append(to)


class RecordingHandler:
    """A :class:`~callplane.transports.base.TransportHandler` that keeps every event; with
    ``audio_error`` it raises that on every frame of audio instead."""

    def __init__(self, audio_error: Exception | None = None) -> None:
        self.events: list[TransportEvent] = []
        self.audio_error = audio_error

    def on_audio(self, payload_b64: bytes) -> None:
        if self.audio_error is not None:
            raise self.audio_error
        self.events.append(AudioIn(payload_b64))

    def on_mark(self, name: str) -> None:
        self.events.append(MarkIn(name))

    def on_dtmf(self, digit: str) -> None:
        self.events.append(DtmfIn(digit))

    def on_end(self, reason: str) -> None:
        self.events.append(CallEnded(reason))

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class FakeClock:
    """A stand-in for the ``time`` module: ``monotonic`` stands still until :meth:`advance`;
    ``time`` is the wall clock moved by the same amount."""

    def __init__(self) -> None:
        self._mono = 1000.0
        self._wall = time.time()

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (on the event loop) for ``condition``; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- Modal


class _Aio:
    """modal's ``method.aio(...)`` shape: an attribute with an async ``aio``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.aio = fn


class FakeFunctionCall:
    """Stands in for ``modal.FunctionCall``: ``get.aio(timeout=0)`` raises the builtin
    TimeoutError while running, as modal's ``poll_function`` does."""

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        self.outcome: BaseException | None = TimeoutError()
        self.cancelled = False
        self.get = _Aio(self._get)
        self.cancel = _Aio(self._cancel)

    async def _get(self, timeout: float | None = None) -> None:
        assert timeout == 0
        if self.outcome is not None:
            raise self.outcome

    async def _cancel(self, terminate_containers: bool = False) -> None:
        self.cancelled = True


class FakeFunction:
    """Stands in for a deployed ``modal.Function`` (what ``modal.Function.from_name`` returns):
    ``spawn.aio(**kwargs)`` records the arguments and returns a :class:`FakeFunctionCall`."""

    def __init__(self) -> None:
        self.spawned: list[dict[str, str]] = []
        self.calls: list[FakeFunctionCall] = []
        self.spawn = _Aio(self._spawn)

    async def _spawn(self, **kwargs: str) -> FakeFunctionCall:
        await asyncio.sleep(0.01)  # a network round trip: lets racing dispatches interleave
        self.spawned.append(kwargs)
        call = FakeFunctionCall(f"fc-{len(self.calls) + 1}")
        self.calls.append(call)
        return call
