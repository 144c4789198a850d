"""The Twilio simulator: REST API, number inventory, carrier and scripted callers in one object.

It stands in for Twilio in offline tests, demos and ``callplane dev``. Production code reaches
it with the official ``twilio`` SDK by changing only the base URL and credentials
(:meth:`Simulator.rest_client` shows how), and the phone side is driven from Python::

    async with Simulator(tmp / "twilio.json", ACCOUNT_SID, AUTH_TOKEN) as sim:
        client = sim.rest_client()
        n = client.incoming_phone_numbers.create(
            phone_number="+14155550100", voice_url="http://127.0.0.1:8000/twilio/voice"
        )
        result = await sim.place_call("+15017122661", n.phone_number,
                                      [wait_for_reply(), say("hello"), wait_for_reply(), hang_up()])
        result.timeline.played_ms_per_mark()

The state (numbers, calls) lives in a JSON file and survives restarts; recordings go to a
``recordings`` directory beside it unless told otherwise. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from callplane_standins.serving import EmbeddedServer, bind_loopback
from callplane_standins.twilio_simulator.call import LiveCall
from callplane_standins.twilio_simulator.callee import Callee, as_callee, human
from callplane_standins.twilio_simulator.caller import Step, hang_up, wait_for_reply
from callplane_standins.twilio_simulator.carrier import Carrier
from callplane_standins.twilio_simulator.faults import Faults
from callplane_standins.twilio_simulator.inventory import Inventory
from callplane_standins.twilio_simulator.rest import create_rest_app
from callplane_standins.twilio_simulator.state import StateStore, TwilioApiError
from callplane_standins.twilio_simulator.timeline import CallResult

__all__ = ["Simulator", "main"]

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")


class Simulator:
    """A running Twilio stand-in for one account (more can be added with :meth:`add_account`).

    ``ring_s`` is how long one ring of an outbound call lasts; ``unanswered_ring_s`` caps how long
    an unanswered one rings before ``no-answer`` (Twilio's ``Timeout`` is honoured below it);
    ``dial_hold_s`` is how long a ``<Dial>``-ed party stays on before hanging up.
    """

    def __init__(
        self,
        state_path: Path | str,
        account_sid: str,
        auth_token: str,
        *,
        recordings_dir: Path | str | None = None,
        inventory: Inventory | None = None,
        ring_s: float = 0.1,
        unanswered_ring_s: float = 2.0,
        dial_hold_s: float = 0.5,
    ) -> None:
        self.state_path = Path(state_path)
        self.store = StateStore.load(self.state_path)
        self.tokens: dict[str, str] = {}
        self.add_account(account_sid, auth_token)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.inventory = inventory or Inventory()
        self.recordings_dir = (
            Path(recordings_dir) if recordings_dir else self.state_path.parent / "recordings"
        )
        self.unanswered_ring_s = unanswered_ring_s
        self.carrier = Carrier(
            self.store, self.tokens, self.recordings_dir, ring_s=ring_s, dial_hold_s=dial_hold_s
        )
        #: Armed REST faults (errors, slow answers): ``POST /_simulator/faults`` or
        #: ``sim.faults.add(Fault(...))``; see :mod:`callplane_standins.twilio_simulator.faults`.
        self.faults = Faults()
        self.callees: dict[str, list[Callee]] = {}
        #: What answers an outbound call to a simulator number with no callee of its own: a
        #: person who listens to the bot's first turn and hangs up.
        self.default_callee: Callee = human(wait_for_reply(timeout_s=10.0), hang_up())
        self.host = "127.0.0.1"
        self.port = 0
        self._server: EmbeddedServer | None = None

    # ---- accounts and callees -----------------------------------------------------------

    def add_account(self, account_sid: str, auth_token: str) -> None:
        """Accept REST requests (and sign webhooks) for another account."""
        if not _ACCOUNT_SID.match(account_sid):
            raise ValueError(f"account_sid {account_sid!r} must be AC followed by 32 hex digits")
        if not auth_token:
            raise ValueError("auth_token must not be empty")
        self.tokens[account_sid] = auth_token

    def set_callee(self, phone_number: str, *callees: Callee | Sequence[Step]) -> None:
        """Who answers outbound calls to ``phone_number`` (any E.164 number, simulator's or
        not), and what they do: a :class:`~callplane_standins.twilio_simulator.callee.Callee`
        (a person after N rings, a voicemail, busy, no answer), or a bare script for a person
        who picks up at the first ring. Several callees answer successive calls (busy, then a
        person); the last one answers every call after."""
        if not _E164.match(phone_number):
            raise ValueError(f"phone_number {phone_number!r} is not E.164")
        if not callees:
            raise ValueError("give at least one callee")
        self.callees[phone_number] = [as_callee(c) for c in callees]

    def callee(self, phone_number: str) -> Callee | None:
        """Who answers an outbound call to ``phone_number``; None if nobody answers (a number
        that is neither the simulator's nor given a callee with :meth:`set_callee`)."""
        queue = self.callees.get(phone_number)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        if self.store.find_number(phone_number) is not None:
            return self.default_callee
        return None

    # ---- serving ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: what to put in the twilio SDK's ``client.api.base_url``."""
        if not self.port:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the REST API on ``host:port`` (port 0 = a free one); return the base URL."""
        if self._server is not None:
            return self.base_url
        server = EmbeddedServer(create_rest_app(self), bind_loopback(port, host), ws="none")
        await server.start()
        self._server = server
        self.host, self.port = server.host, server.port
        return self.base_url

    async def stop(self) -> None:
        """End live calls, stop serving and save the state."""
        await self.carrier.close()
        if self._server is not None:
            await self._server.stop()
        self._server = None
        await self.store.save_async()

    async def serve_forever(self) -> None:
        """Block until the server stops (for a standalone ``callplane`` command)."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.wait()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def rest_client(self, account_sid: str | None = None, auth_token: str | None = None) -> Any:
        """A ``twilio.rest.Client`` aimed at this simulator.

        Production code does the same with its own client: ``client.api.base_url =
        sim.base_url``. The ``api`` domain (numbers, calls) and the ``trunking`` subset
        (``client.trunking.base_url``) are served.
        """
        from twilio.rest import Client

        sid = account_sid or self.account_sid
        client = Client(sid, auth_token or self.tokens[sid])
        client.api.base_url = self.base_url
        client.trunking.base_url = self.base_url
        return client

    # ---- calls ------------------------------------------------------------------------

    async def start_call(
        self, from_: str, to: str, script: Sequence[Step], *, max_duration_s: float = 60.0
    ) -> LiveCall:
        """Ring simulator number ``to`` from ``from_``; returns as soon as the call exists
        (its ``call_sid`` is then usable with the REST API); ``await call.wait()`` for the end.

        Raises TwilioApiError (Twilio's 21211 / 21212 / 21404-style answers) for a bad ``from_``
        or a ``to`` that is not one of the simulator's numbers.
        """
        if not _E164.match(from_):
            raise TwilioApiError(400, 21212, f"from_ {from_!r} is not an E.164 phone number")
        if not _E164.match(to):
            raise TwilioApiError(400, 21211, f"to {to!r} is not an E.164 phone number")
        number = self.store.find_number(to)
        if number is None:
            raise TwilioApiError(
                404, 20404, f"to {to} is not a number bought on this simulator (buy it first)"
            )
        if max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be positive, got {max_duration_s}")
        return await self.carrier.start_inbound(
            number, from_, script, max_duration_s=max_duration_s
        )

    async def place_call(
        self, from_: str, to: str, script: Sequence[Step], *, max_duration_s: float = 60.0
    ) -> CallResult:
        """Ring ``to`` from ``from_`` with a scripted caller and return once the call ended."""
        call = await self.start_call(from_, to, script, max_duration_s=max_duration_s)
        return await call.wait()

    async def wait_for_call(self, call_sid: str, timeout_s: float | None = 60.0) -> CallResult:
        """The result of any call the carrier ran (inbound or REST-created), once it ended."""
        call = self.carrier.calls.get(call_sid)
        if call is None:
            raise KeyError(f"no call {call_sid} was run by this simulator")
        return await call.wait(timeout_s)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator as a program until Ctrl-C.

    ``python -m callplane_standins.twilio_simulator --state .callplane/twilio.json --port 8089``.
    The credentials come from ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN`` (never the command
    line, where they would show in the process list).
    """
    parser = argparse.ArgumentParser(
        prog="python -m callplane_standins.twilio_simulator",
        description="Offline Twilio stand-in: REST API, number inventory, carrier.",
    )
    parser.add_argument("--state", type=Path, required=True, help="state JSON file")
    parser.add_argument("--port", type=int, default=8089, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--recordings", type=Path, default=None, help="WAV directory")
    args = parser.parse_args(argv)
    sid = os.environ.get("TWILIO_ACCOUNT_SID", "")
    token = os.environ.get("TWILIO_AUTH_TOKEN", "")
    if not sid or not token:
        parser.error("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN in the environment")

    async def run() -> None:
        sim = Simulator(args.state, sid, token, recordings_dir=args.recordings)
        await sim.start(port=args.port)
        print(f"Twilio simulator for {sid} on {sim.base_url} (state {args.state})", flush=True)
        try:
            await sim.serve_forever()
        finally:
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
