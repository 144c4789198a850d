"""The one WebSocket interface the bridge's code sees, whichever server or client holds it.

A call's sockets carry 50 frames a second each way, so the interface is synchronous on both
sides: a socket calls its listener once per inbound message, from its own callback, and
``send`` never waits. Waking a coroutine per frame would cost more than forwarding the frame.

* :class:`MessageSocket`: ``send`` (non-blocking), ``listen`` (register the listener that gets
  every message), ``flow`` (whether the peer keeps up) and ``close``. The picows socket
  (:mod:`callplane.transports.picows_socket`), the ASGI adapter of the media app's route
  (:mod:`functions.asgi_socket`) and the tests' fake implement it.
* :class:`SocketListener`: what a socket calls: text messages (as UTF-8 bytes, so that a media
  frame's base64 goes on without a decode and an encode), binary messages, and the close.
* :class:`FlowControl`: per socket, whether the peer is writable; while it is not (the kernel's
  buffer is full, a slow reader), sends are kept in order and written when it is again, so
  that congestion loses, duplicates and reorders nothing.
* :class:`Inbox`: the receiving half every implementation shares: messages that arrive while
  no listener is registered are held in order and handed to the next one, so a consumer may
  take over a socket mid-stream (the stream handler reads ``start``, then the call's transport
  reads the rest) without a message slipping past.

What RFC 6455 asks of a receiver (UTF-8, framing), and where it is done:

* A text message whose payload is not UTF-8: the endpoint MUST fail the connection (section
  8.1), with close code 1007 (section 7.4.1). A socket does so before its listener sees the
  message, so that ``on_text`` only ever gets UTF-8; the listener then hears the close with
  code 1007 (``PicowsSocket``; under ASGI the server does it and reports the code). The check
  is on the whole message, since a fragment may end inside a character (section 5.6).
* A close frame whose reason is not UTF-8: the same rule; picows fails the connection itself.
* Not UTF-8, but framing, which ``PicowsSocket`` also checks: a continuation that begins no
  message, or a new message before a fragmented one ended, is a protocol error (sections 5.4
  and 7.1.7: fail with 1002); a message whose fragments add up to more than the socket takes
  fails with 1009 (section 7.4.1), as picows does for one frame that is too large.
* A binary message: its payload is opaque to the protocol, so nothing is required of it; what
  to do with one is the listener's choice (the Twilio transport drops and counts it).
* Valid UTF-8 whose content the application cannot use (JSON that spells a lone surrogate,
  ``"\\ud800"``, malformed frames): no concern of the WebSocket; the listener's parser drops
  and counts such a message, and the connection goes on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("callplane.socket")

CLOSE_INVALID_TEXT = 1007
"""RFC 6455's close code for a message whose data does not fit its type (a text message that is
not UTF-8)."""
CLOSE_MESSAGE_TOO_BIG = 1009
"""RFC 6455's close code for a message too large to process."""
CLOSE_PROTOCOL_ERROR = 1002
"""RFC 6455's close code for frames that break the protocol (fragments out of order)."""


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` is well-formed UTF-8 (no overlong forms, no surrogates, nothing past
    U+10FFFF: Python's strict decoder is RFC 3629's)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class SocketListener(Protocol):
    """Called by a socket for every inbound message, synchronously, on the event loop. The
    calls must not block; an exception is logged by the socket and does not stop it."""

    def on_text(self, data: bytes) -> None:
        """A whole text message, as its UTF-8 bytes (checked: a socket fails the connection
        on a text message that is not UTF-8, see the module docstring)."""
        ...

    def on_binary(self, data: bytes) -> None:
        """A whole binary message."""
        ...

    def on_close(self, code: int | None, reason: str) -> None:
        """The connection is gone; called once, after every message that arrived before it.
        ``code`` is the peer's close code, if it sent one, or else the code this side closed
        or failed the connection with (1007: a text message was not UTF-8; 1009: a message
        was too large; 1002: a frame was malformed; 1011: the socket itself failed), with
        ``reason`` saying why."""
        ...


Write = Callable[[str | bytes], None]


class FlowControl:
    """Whether the peer is writable, and the messages held back while it is not.

    The socket calls :meth:`pause_writing` when its transport's buffer passes its high-water
    mark and :meth:`resume_writing` when it has drained (asyncio's protocol callbacks, which
    uvicorn's ``FlowControl`` follows too). While paused, :meth:`send` keeps messages in a
    queue instead of writing them; on resume the queue is written in order, stopping again if
    the transport pauses midway. Messages sent while the queue is not empty join it, so order
    never changes. Nothing is dropped: a peer that stops reading costs memory
    (:attr:`buffered`), not audio.

    ``open`` is True exactly when a message may be written at once, so that a socket's send
    can test one attribute before writing directly (the per-frame case).
    """

    __slots__ = ("_backlog", "_write", "open", "pauses", "write_paused")

    def __init__(self, write: Write) -> None:
        self._write = write
        self._backlog: deque[str | bytes] = deque()
        self.write_paused = False
        self.open = True
        self.pauses = 0  # how often the peer stopped keeping up, for stats and tests

    def send(self, message: str | bytes) -> None:
        """Write ``message`` now, or queue it behind what is held back."""
        if self.open:
            self._write(message)
        else:
            self._backlog.append(message)

    def hold(self, message: str | bytes) -> None:
        """Queue ``message`` (for a socket that tested :attr:`open` itself)."""
        self._backlog.append(message)

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self.open = False
            self.pauses += 1

    def resume_writing(self) -> None:
        """Write what was held back, in order, for as long as the peer keeps up."""
        self.write_paused = False
        backlog = self._backlog
        while backlog:
            if self.write_paused:  # the write below filled the buffer again
                return
            self._write(backlog.popleft())
        self.open = not self.write_paused

    @property
    def buffered(self) -> int:
        """Messages held back, waiting for the peer."""
        return len(self._backlog)

    def discard(self) -> None:
        """The connection is gone: what was held back will never be written."""
        self._backlog.clear()


class MessageSocket(Protocol):
    """A WebSocket as the bridge uses it (see the module docstring)."""

    @property
    def flow(self) -> FlowControl:
        """This socket's flow control: whether its peer keeps up."""
        ...

    @property
    def closed(self) -> bool:
        """The connection is gone (either side closed it)."""
        ...

    @property
    def close_code(self) -> int | None:
        """The peer's close code, once it sent one."""
        ...

    @property
    def close_reason(self) -> str:
        """The peer's close reason, once it sent one."""
        ...

    def send(self, text: str | bytes) -> bool:
        """Send a text message (``str``, or its UTF-8 bytes) without waiting: written now, or
        held in order by :attr:`flow` while the peer does not keep up. False (and nothing
        sent) once the connection is gone."""
        ...

    def listen(self, listener: SocketListener | None) -> None:
        """Deliver every inbound message to ``listener`` from now on, first those held while
        there was none; None holds them again."""
        ...

    async def close(self, code: int = 1000) -> None:
        """Close with ``code`` (4000-4999 for the application's reasons) unless already gone."""
        ...


class SocketBase:
    """What every :class:`MessageSocket` implementation shares: its :class:`Inbox`, its
    :class:`FlowControl` and the state the interface reports. A subclass gives ``write``
    (how a message reaches the peer, called by the flow control when the peer keeps up), sets
    ``_gone`` when the connection ends, and implements ``close``."""

    def __init__(self, write: Write) -> None:
        self.inbox = Inbox()
        self._flow = FlowControl(write)
        self._gone = False

    @property
    def flow(self) -> FlowControl:
        return self._flow

    @property
    def closed(self) -> bool:
        return self._gone

    @property
    def close_code(self) -> int | None:
        return self.inbox.close_code

    @property
    def close_reason(self) -> str:
        return self.inbox.close_reason

    def send(self, text: str | bytes) -> bool:
        """Write now or hold in order (see :class:`FlowControl`); False once gone."""
        if self._gone:
            return False
        self._flow.send(text)
        return True

    def listen(self, listener: SocketListener | None) -> None:
        self.inbox.listen(listener)


_TEXT = True
_BINARY = False


class Inbox:
    """Hands inbound messages to a socket's listener, holding them while there is none.

    :attr:`on_text` is the listener's ``on_text`` while it can take a message at once (a
    listener is registered and nothing is held): a socket's per-frame path calls it directly
    and uses :meth:`text` otherwise.
    """

    __slots__ = ("_held", "_listener", "close_code", "close_reason", "closed", "on_text")

    def __init__(self) -> None:
        self.on_text: Callable[[bytes], None] | None = None
        self._listener: SocketListener | None = None
        self._held: deque[tuple[bool, bytes]] = deque()
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    def listen(self, listener: SocketListener | None) -> None:
        """Make ``listener`` the receiver, after handing it what was held (it may stop
        listening midway, which leaves the rest held)."""
        self._listener = listener
        self.on_text = None
        if listener is None:
            return
        held = self._held
        while held:
            if self._listener is not listener:
                return
            text, data = held.popleft()
            _deliver(listener, text, data)
        if self._listener is not listener:
            return
        if self.closed:
            _closed(listener, self.close_code, self.close_reason)
        else:
            self.on_text = listener.on_text

    def text(self, data: bytes) -> None:
        """A text message: to the listener, or held."""
        self._message(_TEXT, data)

    def binary(self, data: bytes) -> None:
        """A binary message: to the listener, or held."""
        self._message(_BINARY, data)

    def _message(self, text: bool, data: bytes) -> None:
        if self.closed:  # the connection failed: what was still in its buffer is not read
            return
        listener = self._listener
        if listener is None or self._held:
            self._held.append((text, data))
        else:
            _deliver(listener, text, data)

    def peer_gone(self, code: int | None, reason: str) -> None:
        """The connection ended: tell the listener once it has had every message."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.on_text = None
        listener = self._listener
        if listener is not None and not self._held:
            _closed(listener, code, reason)


def _deliver(listener: SocketListener, text: bool, data: bytes) -> None:
    try:
        if text:
            listener.on_text(data)
        else:
            listener.on_binary(data)
    except Exception:
        log.exception("a socket listener failed on a message; the socket goes on")


def _closed(listener: SocketListener, code: int | None, reason: str) -> None:
    try:
        listener.on_close(code, reason)
    except Exception:
        log.exception("a socket listener failed on the close")
