"""What the conversation core needs from a transport (a Twilio stream, a LiveKit room, a test).

The conversation never sees a transport's wire format. A transport calls its
:class:`TransportHandler` once per inbound event, synchronously (from its socket's callback, or
from the clock that mixes a room), and the handler answers with :meth:`Transport.play` and
:meth:`Transport.clear`, which never wait: a congested socket holds what is sent, in order.
So a frame of a call is handled where it arrives, without waking a coroutine. Only what is
rare and slow (hanging up and transferring through a REST API) is a coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

TransferOutcome = Literal["line_moved", "participant_moved"]
"""What a transfer moved. ``line_moved``: the transport's own line (a phone call) now rings
elsewhere, so the conversation is over. ``participant_moved``: one phone caller among others
(a hybrid room) left for the target, and the agent stays for the rest."""


class TransportHandler(Protocol):
    """Takes a call's inbound events; called synchronously, so every method returns at once."""

    def on_audio(self, payload_b64: bytes) -> None:
        """One frame of caller audio: base64 (as ASCII bytes) in the transport's format
        (µ-law for phone calls)."""
        ...

    def on_mark(self, name: str) -> None:
        """The far end played everything up to this mark (or dropped it on a clear)."""
        ...

    def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key."""
        ...

    def on_end(self, reason: str) -> None:
        """The call ended on the transport's side; nothing follows."""
        ...


class Transport(Protocol):
    @property
    def audio_format(self) -> Literal["audio/pcmu", "audio/pcm"]:
        """The Realtime session's audio format on this transport (both directions)."""
        ...

    @property
    def bytes_per_ms(self) -> float:
        """Bytes of audio per millisecond in that format, for played-position accounting."""
        ...

    def listen(self, handler: TransportHandler | None) -> None:
        """Send inbound events to ``handler`` from now on, first any that came before; None
        stops (what comes then waits for the next handler)."""
        ...

    def play(self, payload_b64: str, mark: str) -> None:
        """Queue agent audio at the far end, followed by a mark that echoes once played."""
        ...

    def clear(self) -> None:
        """Drop agent audio queued at the far end (barge-in). The echoes of the marks it
        drops reach the handler after this returns, never within it."""
        ...

    async def hang_up(self) -> None: ...

    async def transfer(self, to: str) -> TransferOutcome:
        """Move the call to the number ``to`` (already resolved by
        :func:`callplane.profiles.transfer_target`); return what moved once the carrier took
        it. Raises :class:`callplane.tools.TransferFailed` when nothing moved, with a reason
        the model can pass on."""
        ...


# The events as values, for a consumer that handles them in a coroutine of its own (the phone
# bridge, whose caller audio goes to LiveKit's capture coroutine) and for tests.


@dataclass(frozen=True, slots=True)
class AudioIn:
    """Caller audio, base64 as ASCII bytes, in the transport's format."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class DtmfIn:
    digit: str


@dataclass(frozen=True, slots=True)
class MarkIn:
    """The far end played everything up to this mark (or dropped it on a clear)."""

    name: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    reason: str


TransportEvent = AudioIn | DtmfIn | MarkIn | CallEnded


class EventQueue:
    """A :class:`TransportHandler` that queues the events, for a consumer that must await per
    event anyway (LiveKit's ``capture_frame``): iterate it until :class:`CallEnded`."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[TransportEvent] = asyncio.Queue()

    def on_audio(self, payload_b64: bytes) -> None:
        self._queue.put_nowait(AudioIn(payload_b64))

    def on_mark(self, name: str) -> None:
        self._queue.put_nowait(MarkIn(name))

    def on_dtmf(self, digit: str) -> None:
        self._queue.put_nowait(DtmfIn(digit))

    def on_end(self, reason: str) -> None:
        self._queue.put_nowait(CallEnded(reason))

    async def __aiter__(self) -> AsyncIterator[TransportEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, CallEnded):
                return
