"""Child process of ``bench/relay.py``: the local engine in ``--mode load`` with its load probe.

    python bench/relay_engine.py PORT

Prints the port once listening, then reads commands on stdin, one a line:
``dump PATH`` writes the probe's records as JSON to PATH and prints ``ok``. EOF stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from callplane_standins.realtime_engine.context import EngineSettings
from callplane_standins.realtime_engine.server import EngineServer


async def main(port: int) -> None:
    server = EngineServer(EngineSettings(mode="load", load_probe=True))
    probe = server.ctx.probe
    assert probe is not None
    await server.start("127.0.0.1", port)
    print(server.port, flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command, _, arg = line.strip().partition(" ")
            if command == "dump":
                text = json.dumps(probe.snapshot())
                await loop.run_in_executor(None, Path(arg).write_text, text)
                print("ok", flush=True)
    finally:
        await server.stop()


if __name__ == "__main__":
    # The engine is part of the harness: on uvloop where available, like the bridge, so that
    # the load side's ceiling sits as high as Python allows.
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
