"""The media-stream server: Twilio's media-stream WebSockets on picows, without ASGI.

    python -m functions.stream_server --port 8765     # settings from CALLPLANE_MEDIA_CONFIG

Why a second server for the same streams: a call is 50 media frames a second each way, and
under uvicorn every frame passes the ASGI message dicts, Starlette's WebSocket and a coroutine
per send. ``bench/ws_stacks.py`` measured a paced relay at 57 µs of CPU per frame with the
Starlette server and 26 µs with picows on both sides. The HTTP routes (records, outbound calls,
agent dispatch) stay on the FastAPI app; this server accepts only ``/twilio/media/<key>`` (the
per-call stream URL the edge writes in the TwiML) and hands each stream to the same
:class:`functions.media_streams.MediaStreams`, so authentication, profiles and records are the
same code whichever server took the call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from http import HTTPStatus

from picows import (
    WSListener,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from callplane.transports.picows_socket import PicowsSocket
from functions.media_streams import MediaStreams

log = logging.getLogger("callplane.media")

STREAM_PATH = b"/twilio/media"
MAX_FRAME_BYTES = 1024 * 1024  # Twilio's frames are a few hundred bytes; a start is < 4 KiB
"""The largest frame, and message, a stream may send. picows fails a connection that sends a
larger frame with 1009 (RFC 6455 section 7.4.1) without reading it, the socket one whose
fragments add up to more, and the call ends as ``message_too_big``;
anything smaller is read, and judged by the socket (UTF-8) and the Twilio transport (the rest,
see :mod:`callplane.transports.twilio`)."""


class _Stream(PicowsSocket):
    """One accepted media stream: served by :meth:`MediaStreams.serve` in its own task."""

    max_message_bytes = MAX_FRAME_BYTES  # fragments of a message count together

    def __init__(self, server: StreamServer, key: str) -> None:
        super().__init__()
        self._server = server
        self.key = key  # the per-call key of the URL it was upgraded at

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        self._server._spawn(self)


class StreamServer:
    """Serves ``/twilio/media/<key>`` for ``streams`` until :meth:`stop`."""

    def __init__(self, streams: MediaStreams) -> None:
        self.streams = streams
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        """Listen on ``sock`` (already bound; the caller picks the address)."""
        self._server = await ws_create_server(
            self._upgrade, sock=sock, max_frame_size=MAX_FRAME_BYTES
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening; calls still running get ``timeout_s`` to end, then are cancelled."""
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _upgrade(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        path = request.path.split(b"?", 1)[0]
        if path != STREAM_PATH and not path.startswith(STREAM_PATH + b"/"):
            where = STREAM_PATH.decode()
            return _refuse(HTTPStatus.NOT_FOUND, f"only {where}/<key> is served here")
        # The bare path gives an empty key, which upgrade_allowed refuses (and says why).
        key = path[len(STREAM_PATH) + 1 :].decode("ascii", "replace")
        signature = request.headers.get("x-twilio-signature", "")
        peer = request.headers.get("x-forwarded-for", "a direct peer")
        if not self.streams.upgrade_allowed(key, signature, peer):
            return _refuse(
                HTTPStatus.FORBIDDEN,
                "bad or missing X-Twilio-Signature for this stream URL, or no per-call key",
            )
        return _Stream(self, key)

    def _spawn(self, stream: _Stream) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: _Stream) -> None:
        try:
            await self.streams.serve(stream, stream.key)
        except Exception:
            log.exception("media stream failed")
        finally:
            await stream.close()


def _refuse(status: HTTPStatus, why: str) -> WSUpgradeResponseWithListener:
    body = f"{why}\n".encode()
    return WSUpgradeResponseWithListener(
        WSUpgradeResponse.create_error_response(status, body), None
    )


async def serve_from_env(host: str, port: int) -> None:
    """The stream server for the settings in ``CALLPLANE_MEDIA_CONFIG``, until cancelled."""
    from callplane.media_settings import MediaSettings

    settings = MediaSettings.from_env()
    store = settings.open_records()
    coordination = settings.open_coordination()
    # An outbound call's request (its profile and context) is read from the shared state,
    # whichever media container placed it.
    streams = MediaStreams(settings, store, coordination, settings.load_tools())
    server = StreamServer(streams)
    sock = socket.create_server((host, port))
    await server.start(sock)
    log.info("media streams on ws://%s:%d%s/<key>", host, port, STREAM_PATH.decode())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # what Modal and a supervisor send to stop it
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
        log.info("stopping: calls in progress get up to 10 s to end")
    finally:
        await server.stop()
        await streams.aclose()
        await asyncio.to_thread(store.close)
        await coordination.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="callplane's media-stream server (picows)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop

        uvloop.run(serve_from_env(args.host, args.port))
    except ImportError:
        asyncio.run(serve_from_env(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
