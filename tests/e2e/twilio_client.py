"""A hand-driven Twilio for tests that must send what the simulator never would (garbage frames,
custom parameters the TwiML did not give): it asks the edge for TwiML with a signed webhook, then
opens the media stream the TwiML names, signed, with the edge's stream token, and speaks and
listens on it frame by frame."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import Mapping
from types import TracebackType

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callplane_dev.stack import DEFAULT_CALLER, LocalStack
from callplane_standins.twilio_simulator.caller import synthesize_ulaw
from callplane_standins.twilio_simulator.twiml import Stream, parse_twiml

FRAME = 160  # 20 ms of µ-law


class TwilioLikeStream:
    """``extra_parameters`` join the TwiML's custom parameters in the ``start`` message (a
    client other than Twilio could send anything there)."""

    def __init__(
        self,
        stack: LocalStack,
        profile: str = "support",
        *,
        extra_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.extra_parameters = dict(extra_parameters or {})
        self.to = stack.number_for(profile)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.ws: ClientConnection | None = None
        self._parameters: dict[str, str] = {}
        self.media: asyncio.Queue[bytes] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TwilioLikeStream:
        await self.open()
        await self.start()
        return self

    async def open(self) -> None:
        """Ask the edge for TwiML and open the stream it names, signed, as Twilio does."""
        validator = RequestValidator(self.stack.creds.auth_token)
        voice_url = self.stack.edge_url + "/twilio/voice"
        form = {
            "CallSid": self.call_sid,
            "AccountSid": self.stack.creds.account_sid,
            "From": DEFAULT_CALLER,
            "To": self.to,
            "FromCountry": "US",
            "CallStatus": "ringing",
            "Direction": "inbound",
        }
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                voice_url,
                data=form,
                headers={"X-Twilio-Signature": validator.compute_signature(voice_url, form)},
            )
        answer.raise_for_status()
        (stream,) = parse_twiml(answer.text)
        assert isinstance(stream, Stream)
        self.ws = await connect(
            stream.url,
            additional_headers={"X-Twilio-Signature": validator.compute_signature(stream.url, {})},
        )
        self._parameters = stream.parameters

    async def start(self) -> None:
        """Send ``connected`` and the ``start`` carrying the edge's stream token, then listen."""
        assert self.ws is not None
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
        await self.ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "streamSid": self.stream_sid,
                    "start": {
                        "streamSid": self.stream_sid,
                        "accountSid": self.stack.creds.account_sid,
                        "callSid": self.call_sid,
                        "tracks": ["inbound"],
                        "customParameters": {**self._parameters, **self.extra_parameters},
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                }
            )
        )
        self._reader = asyncio.create_task(self._read())

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):  # the server may fail the stream
            await self._read_frames(self.ws)

    async def _read_frames(self, ws: ClientConnection) -> None:
        async for frame in ws:
            message = json.loads(frame)
            if message["event"] == "media":
                await self.media.put(base64.b64decode(message["media"]["payload"]))
            elif message["event"] == "mark":  # played at once, as far as this client cares
                await ws.send(
                    json.dumps(
                        {"event": "mark", "streamSid": self.stream_sid, "mark": message["mark"]}
                    )
                )

    async def send_raw(self, frame: str | bytes, *, text: bool | None = None) -> None:
        """Send ``frame`` as it is: a str as a text message, bytes as a binary one unless
        ``text`` (then as a text message, whether or not the bytes are UTF-8)."""
        assert self.ws is not None
        await self.ws.send(frame, text=text)

    async def closed(self, timeout_s: float = 20.0) -> int | None:
        """Wait until the server has closed the stream; the close code it sent."""
        assert self.ws is not None
        async with asyncio.timeout(timeout_s):
            await self.ws.wait_closed()
        return self.ws.close_code

    async def say(self, text: str, trailing_silence_ms: int = 1000) -> None:
        """Speak in real-time 20 ms frames, then stay silent long enough to end the turn."""
        audio = await asyncio.to_thread(synthesize_ulaw, text, "en-us")
        audio += b"\xff" * (8 * trailing_silence_ms)
        for i in range(0, len(audio), FRAME):
            payload = base64.b64encode(audio[i : i + FRAME]).decode()
            await self.send_raw(
                json.dumps(
                    {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
                )
            )
            await asyncio.sleep(0.02)

    async def until_agent_quiet(self, quiet_s: float = 1.5, timeout_s: float = 20.0) -> float:
        """Collect agent audio until none arrives for ``quiet_s``; return its length in ms."""
        received = 0
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    chunk = await asyncio.wait_for(self.media.get(), quiet_s)
                except TimeoutError:
                    if received:
                        return received / 8
                    continue
                received += len(chunk)

    async def stop(self) -> None:
        await self.send_raw(
            json.dumps(
                {"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": self.call_sid}}
            )
        )
