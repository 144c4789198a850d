"""A call's webhook parameters and its status callbacks, delivered in order.

Every request Twilio makes about a call (the voice webhook, ``<Redirect>`` fetches, status
callbacks) carries the same call parameters; :func:`call_params` builds them. Status callbacks
(initiated, ringing, answered, completed with ``CallDuration``) and stream callbacks
(stream-started, stream-stopped) are queued and POSTed one at a time by one worker, so the
application receives them in the order they happened, signed, and a slow one delays the next
rather than racing it (https://www.twilio.com/docs/voice/api/call-resource#statuscallback).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from email.utils import format_datetime

from callplane_standins.twilio_simulator.inventory import country_of
from callplane_standins.twilio_simulator.state import CallResource, PhoneNumberRecord, utcnow
from callplane_standins.twilio_simulator.timeline import CallLog
from callplane_standins.twilio_simulator.twiml import Stream
from callplane_standins.twilio_simulator.webhooks import WebhookError

__all__ = ["API_VERSION", "INBOUND_STATUS_EVENTS", "Send", "StatusCallbacks", "call_params"]

API_VERSION = "2010-04-01"
# Status callback events (Twilio's StatusCallbackEvent names). The simulator sends all four to
# a number's StatusCallback; outbound-api calls send those requested (default: completed).
INBOUND_STATUS_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
_FINAL = ("completed", "busy", "no-answer", "canceled", "failed")

Send = Callable[[str, str, Mapping[str, str], str], Awaitable[str]]
"""Makes one signed webhook request: ``(url, method, params, auth_token) -> body``."""


def call_params(rec: CallResource, number: PhoneNumberRecord | None, status: str) -> dict[str, str]:
    """The parameters of every webhook about call ``rec``, reporting ``status``.

    ``number`` is the simulator's number the call is to (its locality fills the To* fields).
    """
    to_country = number.iso_country if number else country_of(rec.to)
    to_city = number.locality if number else ""
    to_state = number.region if number else ""
    from_country = country_of(rec.from_number)
    params = {
        "AccountSid": rec.account_sid,
        "ApiVersion": API_VERSION,
        "CallSid": rec.sid,
        "CallStatus": status,
        "Direction": rec.direction,
        "From": rec.from_number,
        "To": rec.to,
        "Caller": rec.from_number,
        "Called": rec.to,
        "FromCountry": from_country,
        "FromCity": "",
        "FromState": "",
        "FromZip": "",
        "CallerCountry": from_country,
        "CallerCity": "",
        "CallerState": "",
        "CallerZip": "",
        "ToCountry": to_country,
        "ToCity": to_city,
        "ToState": to_state,
        "ToZip": "",
        "CalledCountry": to_country,
        "CalledCity": to_city,
        "CalledState": to_state,
        "CalledZip": "",
    }
    if rec.answered_by:
        params["AnsweredBy"] = rec.answered_by
    if rec.parent_call_sid:
        params["ParentCallSid"] = rec.parent_call_sid
    return params


class StatusCallbacks:
    """The ordered callback queue of one call and the worker that delivers it.

    ``send`` makes each request (the carrier's :meth:`Carrier.http_request`, looked up per
    request so that a test can replace it to lose or delay callbacks).

    ``url``/``method``/``events`` are the call's ``StatusCallback`` settings; a failed delivery
    is reported in the call's errors as Twilio's 15003 and does not stop later ones.
    """

    def __init__(
        self,
        send: Send,
        auth_token: str,
        log: CallLog,
        *,
        url: str,
        method: str,
        events: frozenset[str],
    ) -> None:
        self._send = send
        self._token = auth_token
        self._log = log
        self._url = url
        self._method = method
        self._events = events
        self._seq = 0
        self._queue: asyncio.Queue[tuple[str, str, dict[str, str]] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start delivering (callbacks queued before this wait for it)."""
        self._worker = asyncio.create_task(self._deliver())

    def call_progress(
        self, event: str, status: str, rec: CallResource, number: PhoneNumberRecord | None
    ) -> None:
        """Queue the ``event`` callback reporting ``status``, if the call asked for it."""
        if not self._url or event not in self._events:
            return
        self._seq += 1
        params = call_params(rec, number, status)
        params.update(
            {
                "Timestamp": format_datetime(utcnow()),
                "CallbackSource": "call-progress-events",
                "SequenceNumber": str(self._seq - 1),
            }
        )
        if status in _FINAL:
            params["CallDuration"] = str(rec.duration or 0)
            params["Duration"] = str(math.ceil((rec.duration or 0) / 60))
        self._queue.put_nowait((self._url, self._method, params))

    def stream_event(self, verb: Stream, rec: CallResource, stream_sid: str, event: str) -> None:
        """Queue a ``<Stream statusCallback>`` event (stream-started, stream-stopped)."""
        if not verb.status_callback:
            return
        params = {
            "AccountSid": rec.account_sid,
            "CallSid": rec.sid,
            "StreamSid": stream_sid,
            "StreamName": verb.name or stream_sid,
            "StreamEvent": event,
            "StreamError": "",
            "Timestamp": format_datetime(utcnow()),
        }
        self._queue.put_nowait((verb.status_callback, verb.status_callback_method, params))

    async def _deliver(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            url, method, params = item
            try:
                await self._send(url, method, params, self._token)
            except WebhookError as exc:
                self._log.error(f"15003: status callback to {url} failed: {exc}")

    async def close(self, timeout_s: float = 20.0) -> None:
        """Deliver what is queued (at most ``timeout_s``), then stop the worker."""
        self._queue.put_nowait(None)
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout=timeout_s)
        except TimeoutError:
            self._worker.cancel()
