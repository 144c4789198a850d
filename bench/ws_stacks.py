"""What the WebSocket stacks cost per relayed frame, apart from callplane's own code.

    uv run python bench/ws_stacks.py [--calls 200] [--seconds 10] [--json OUT]

One relay process sits between a paced sender (N connections, one Twilio-sized media frame on
each every 20 ms) and a sink. For each frame it cuts the payload out of the media frame and
sends an ``input_audio_buffer.append`` upstream: what the bridge does per inbound frame, minus
the conversation. The relay is built three ways:

- ``uvicorn+websockets``: Starlette's WebSocket under uvicorn (``websockets-sansio``) in, the
  ``websockets`` client out: the media app with the Realtime client before it moved to picows;
- ``uvicorn+picows``: the same server, the picows client out: the media app now;
- ``picows+picows``: a picows server in, the picows client out: what a media-stream server
  outside ASGI would cost.

The sender and the sink use picows (the cheapest stack here) and share a core; the relay has
the other one. The figure is the relay's CPU time (user + system) per frame while sending.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

SINK_PORT, RELAY_PORT = 18901, 18902
RELAY_CORE, LOAD_CORE = 0, 1
PAYLOAD = base64.b64encode(os.urandom(160)).decode()
MEDIA = {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": PAYLOAD}
FRAME = json.dumps(
    {"event": "media", "sequenceNumber": "1", "media": MEDIA, "streamSid": "MZ" + "0" * 32},
    separators=(",", ":"),
).encode()
MARKER = '"payload":"'


def append_for(media_frame: str) -> str:
    start = media_frame.index(MARKER) + len(MARKER)
    audio = media_frame[start : media_frame.index('"', start)]
    return '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'


class _Quiet(WSListener):
    """Reads and drops every frame (the sink's and the relay's upstream listener)."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        pass


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


def run_sink() -> None:
    _pin(LOAD_CORE)

    async def main() -> None:
        server = await ws_create_server(lambda request: _Quiet(), "127.0.0.1", SINK_PORT)
        await server.serve_forever()

    uvloop.run(main())


def _serve_starlette(upstream: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket
    from websockets.asyncio.client import connect

    async def relay(ws: WebSocket) -> None:
        await ws.accept()
        if upstream == "websockets":
            up = await connect(f"ws://127.0.0.1:{SINK_PORT}/", compression=None, max_size=None)
            while (message := await ws.receive()).get("type") == "websocket.receive":
                await up.send(append_for(str(message["text"])))
            await up.close()
        else:
            transport, _ = await ws_connect(_Quiet, f"ws://127.0.0.1:{SINK_PORT}/")
            while (message := await ws.receive()).get("type") == "websocket.receive":
                transport.send(WSMsgType.TEXT, append_for(str(message["text"])).encode())
            transport.disconnect()

    app = Starlette(routes=[WebSocketRoute("/", relay)])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=RELAY_PORT,
        log_level="warning",
        ws="websockets-sansio",
        loop="uvloop",
        lifespan="off",
    )


def _serve_picows() -> None:
    class Relay(WSListener):
        def __init__(self) -> None:
            self.up: WSTransport | None = None
            self.waiting: list[bytes] = []

        def on_ws_connected(self, transport: WSTransport) -> None:
            asyncio.get_running_loop().create_task(self._open())

        async def _open(self) -> None:
            self.up, _ = await ws_connect(_Quiet, f"ws://127.0.0.1:{SINK_PORT}/")
            for frame in self.waiting:
                self.up.send(WSMsgType.TEXT, frame)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            out = append_for(frame.get_payload_as_ascii_text()).encode()
            if self.up is None:
                self.waiting.append(out)
            else:
                self.up.send(WSMsgType.TEXT, out)

    async def main() -> None:
        server = await ws_create_server(lambda request: Relay(), "127.0.0.1", RELAY_PORT)
        await server.serve_forever()

    uvloop.run(main())


STACKS: dict[str, Callable[[], None]] = {
    "uvicorn+websockets": lambda: _serve_starlette("websockets"),
    "uvicorn+picows": lambda: _serve_starlette("picows"),
    "picows+picows": _serve_picows,
}


def run_relay(stack: str) -> None:
    _pin(RELAY_CORE)
    STACKS[stack]()


async def drive(calls: int, seconds: float, relay_pid: int) -> dict[str, Any]:
    """N paced connections, one frame each per 20 ms spread over 10 sub-slots; the relay's CPU."""
    transports = []
    for _ in range(calls):
        transport, _ = await ws_connect(_Quiet, f"ws://127.0.0.1:{RELAY_PORT}/")
        transports.append(transport)
    await asyncio.sleep(1.0)
    relay = psutil.Process(relay_pid)
    before = relay.cpu_times()
    ticks = int(seconds / 0.02)
    start = time.monotonic()
    for tick in range(ticks):
        for slot in range(10):
            for transport in transports[slot::10]:
                transport.send(WSMsgType.TEXT, FRAME)
            delay = start + tick * 0.02 + (slot + 1) * 0.002 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    late_s = time.monotonic() - start - seconds
    await asyncio.sleep(1.0)  # let the relay finish what is queued
    after = relay.cpu_times()
    for transport in transports:
        transport.disconnect()
    frames = ticks * calls
    cpu_s = (after.user + after.system) - (before.user + before.system)
    return {
        "frames": frames,
        "relay_cpu_s": round(cpu_s, 3),
        "relay_cpu_share_of_core": round(cpu_s / (seconds + 1.0), 3),
        "cpu_us_per_frame": round(cpu_s / frames * 1e6, 1),
        "sender_late_s": round(max(0.0, late_s), 3),
    }


def measure(stack: str, calls: int, seconds: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    sink = context.Process(target=run_sink, daemon=True)
    relay = context.Process(target=run_relay, args=(stack,), daemon=True)
    sink.start()
    time.sleep(0.5)
    relay.start()
    time.sleep(1.5)
    try:
        assert relay.pid is not None
        _pin(LOAD_CORE)
        return {"stack": stack, "calls": calls, **uvloop.run(drive(calls, seconds, relay.pid))}
    finally:
        relay.kill()
        sink.kill()
        relay.join()
        sink.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stack", choices=sorted(STACKS), action="append")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    results = []
    for stack in args.stack or list(STACKS):
        result = measure(stack, args.calls, args.seconds)
        results.append(result)
        print(
            f"{stack:20s} {result['cpu_us_per_frame']:6.1f} us/frame "
            f"({result['relay_cpu_share_of_core']:.0%} of a core, {result['frames']} frames)",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
