"""What the conversation core needs from a transport (a Twilio stream, a LiveKit room, a test).

The conversation never sees a transport's wire format: it gets these events and calls these
methods, the way pipecat separates serializers from transports and LiveKit agents separate
sessions from rooms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class AudioIn:
    """Caller audio, base64, in the transport's format (µ-law for phone calls)."""

    payload: str


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


class Transport(Protocol):
    @property
    def audio_format(self) -> Literal["audio/pcmu", "audio/pcm"]:
        """The Realtime session's audio format on this transport (both directions)."""
        ...

    @property
    def bytes_per_ms(self) -> float:
        """Bytes of audio per millisecond in that format, for played-position accounting."""
        ...

    def events(self) -> AsyncIterator[TransportEvent]:
        """Inbound events until the call ends (the last one is CallEnded)."""
        ...

    async def play(self, payload_b64: str, mark: str) -> None:
        """Queue agent audio at the far end, followed by a mark that echoes once played."""
        ...

    async def clear(self) -> None:
        """Drop agent audio queued at the far end (barge-in)."""
        ...

    async def hang_up(self) -> None: ...

    async def transfer(self, to: str) -> None: ...


# Take one frame of caller audio (base64, as ASCII bytes) or another inbound event at once;
# False if it cannot be handled now (it then comes from Transport.events()).
AudioSink = Callable[[bytes], bool]
EventSink = Callable[[TransportEvent], bool]


@runtime_checkable
class DirectAudio(Protocol):
    """A transport that can also be driven synchronously, from its socket's callbacks: the
    per-frame fast path of a phone call (optional; see ``Conversation``)."""

    def set_sinks(self, audio: AudioSink | None, event: EventSink | None) -> None:
        """From now on offer each inbound audio frame to ``audio`` and each other event to
        ``event`` as it arrives, while the reader of :meth:`Transport.events` waits for the
        next one; what they decline comes from ``events()`` as usual, in order. None stops
        it."""
        ...

    def play_ready(self) -> bool:
        """True when :meth:`play_now` can send at once (the socket is not congested)."""
        ...

    def play_now(self, payload_b64: str, mark: str) -> None:
        """:meth:`Transport.play` without the wait for a congested socket to drain; call it
        only after :meth:`play_ready`."""
        ...

    def clear_now(self) -> None:
        """:meth:`Transport.clear` without the wait; call it only after :meth:`play_ready`."""
        ...
