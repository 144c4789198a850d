"""A tiny stand-in for the media bridge, written against Twilio's documented contract only.

It serves the voice webhook (TwiML ``<Connect><Stream>`` built with the ``twilio`` SDK), a
status-callback endpoint and the media WebSocket on 127.0.0.1, checks every signature with the
SDK's ``RequestValidator``, and records everything it receives with arrival times. Tests give
it a ``behaviour`` coroutine that runs once the stream's ``start`` arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from callplane.audio import ulaw_encode

SILENCE_BYTE = 0xFF


def tone(ms: int, freq: float = 440.0) -> bytes:
    """``ms`` of a sine tone as 8 kHz µ-law (deterministic bot "speech")."""
    n = ms * 8
    t = np.arange(n) / 8000.0
    pcm = (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)
    return bytes(ulaw_encode(pcm).tobytes())


@dataclass
class Hit:
    """One HTTP request the bot received."""

    path: str
    url: str
    form: dict[str, str]
    signature_valid: bool
    at: float


@dataclass
class Frame:
    at: float
    msg: dict[str, Any]


@dataclass
class BotStream:
    """One media WebSocket as the bot saw it."""

    ws: WebSocket
    signature_valid: bool
    url: str
    frames: list[Frame] = field(default_factory=list)
    stream_sid: str = ""
    start: dict[str, Any] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    caller_spoke: asyncio.Event = field(default_factory=asyncio.Event)
    first_speech_at: float | None = None
    mark_sent_at: dict[str, float] = field(default_factory=dict)

    def events(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.msg.get("event") == kind]

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(msg))

    async def play(self, audio: bytes, mark: str | None = None) -> None:
        payload = base64.b64encode(audio).decode()
        await self.send(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        )
        if mark is not None:
            self.mark_sent_at[mark] = asyncio.get_running_loop().time()
            await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": mark}})

    async def clear(self) -> None:
        await self.send({"event": "clear", "streamSid": self.stream_sid})


Behaviour = Callable[[BotStream], Coroutine[Any, Any, None]]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Bot:
    """The test bot. ``twiml`` (a function of the webhook form) decides what the webhook answers."""

    def __init__(self, auth_token: str) -> None:
        self.validator = RequestValidator(auth_token)
        self.hits: list[Hit] = []
        self.streams: list[BotStream] = []
        self.behaviour: Behaviour | None = None
        self.twiml: Callable[[dict[str, str]], str] = self.connect_twiml
        self.parameters = {"token": "tok-123", "tenant": "acme"}
        self.stream_started = asyncio.Event()
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media"

    def connect_twiml(self, form: dict[str, str]) -> str:
        r = VoiceResponse()
        c = Connect()
        s = c.stream(url=self.media_url, name="bridge")
        for name, value in self.parameters.items():
            s.parameter(name=name, value=value)
        r.append(c)
        return str(r)

    def hits_on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    def app(self) -> FastAPI:
        app = FastAPI()

        async def record(request: Request) -> dict[str, str]:
            form = {k: str(v) for k, v in (await request.form()).items()}
            sig = request.headers.get("x-twilio-signature", "")
            url = str(request.url)
            valid = bool(self.validator.validate(url, form, sig))
            self.hits.append(
                Hit(request.url.path, url, form, valid, asyncio.get_running_loop().time())
            )
            return form

        @app.post("/voice")
        async def voice(request: Request) -> Response:
            form = await record(request)
            return Response(self.twiml(form), media_type="text/xml")

        @app.post("/status")
        async def status(request: Request) -> Response:
            await record(request)
            return Response(status_code=204)

        @app.websocket("/media")
        async def media(ws: WebSocket) -> None:
            sig = ws.headers.get("x-twilio-signature", "")
            url = str(ws.url)
            stream = BotStream(ws, bool(self.validator.validate(url, {}, sig)), url)
            self.streams.append(stream)
            await ws.accept()
            loop = asyncio.get_running_loop()
            task: asyncio.Task[None] | None = None
            try:
                while True:
                    text = await ws.receive_text()
                    msg = json.loads(text)
                    stream.frames.append(Frame(loop.time(), msg))
                    event = msg.get("event")
                    if event == "start":
                        stream.stream_sid = msg["streamSid"]
                        stream.start = msg["start"]
                        stream.started.set()
                        self.stream_started.set()
                        if self.behaviour is not None:
                            task = asyncio.create_task(self.behaviour(stream))
                    elif event == "media" and stream.first_speech_at is None:
                        payload = base64.b64decode(msg["media"]["payload"])
                        if any(b != SILENCE_BYTE for b in payload):
                            stream.first_speech_at = loop.time()
                            stream.caller_spoke.set()
                    elif event == "stop":
                        stream.stopped.set()
            except WebSocketDisconnect:
                pass
            finally:
                stream.stopped.set()
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

        return app

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
