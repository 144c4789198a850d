"""The harness ceiling's bridge: Twilio media stream in, engine socket out, nothing else.

    python bench/noop_bridge.py PORT ENGINE_URL

No authentication, no records, no playback accounting: caller payloads are cut out of the
frame by string search and forwarded as appends; output deltas become a media frame and a
mark; ``speech_started`` becomes ``clear``. ``bench/relay.py`` runs the same load against it to
measure what the generator, the engine and loopback cost on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from callplane.profiles import AgentProfile, resolve_tools, session_config

PAYLOAD = '"payload":"'


async def handle(ws: ServerConnection, engine_url: str) -> None:
    stream_sid = ""
    async for message in ws:
        event = json.loads(message)
        if event.get("event") == "start":
            stream_sid = event["start"]["streamSid"]
            break
    profile = AgentProfile(name="noop")
    session = session_config(profile, resolve_tools(profile, {}), audio_format="audio/pcmu")
    async with connect(
        engine_url + "?model=gpt-realtime",
        additional_headers={"Authorization": "Bearer noop"},
        compression=None,
        max_size=None,
    ) as rt:
        await rt.send(json.dumps({"type": "session.update", "session": session}))
        await rt.send('{"type":"response.create"}')

        async def up() -> None:
            async for message in ws:
                assert isinstance(message, str)
                i = message.find(PAYLOAD)
                if i < 0:
                    if '"event":"stop"' in message:
                        return
                    continue
                i += len(PAYLOAD)
                audio = message[i : message.index('"', i)]
                await rt.send('{"type":"input_audio_buffer.append","audio":"' + audio + '"}')

        async def down() -> None:
            marks = 0
            async for message in rt:
                assert isinstance(message, str)
                if '"response.output_audio.delta"' in message:
                    delta = json.loads(message)["delta"]
                    marks += 1
                    await ws.send(
                        '{"event":"media","streamSid":"'
                        + stream_sid
                        + '","media":{"payload":"'
                        + delta
                        + '"}}'
                    )
                    await ws.send(
                        '{"event":"mark","streamSid":"'
                        + stream_sid
                        + f'","mark":{{"name":"m{marks}"}}}}'
                    )
                elif '"input_audio_buffer.speech_started"' in message:
                    await ws.send('{"event":"clear","streamSid":"' + stream_sid + '"}')

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def main(port: int, engine_url: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            await handle(ws, engine_url)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
