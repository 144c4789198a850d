"""The media app's outbound routes: ``POST /calls``, ``GET /outbound/{id}`` and Twilio's status
callbacks for the calls it placed. Policy lives in :mod:`callplane.outbound`; this module only
adapts it to HTTP and to Twilio's REST API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qs

import httpx
from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from callplane.coordination import CoordinationUnavailable, OutboundState
from callplane.media_settings import MediaSettings
from callplane.outbound import Dialer, OutboundJob, OutboundRequest, Refused
from callplane.records import RecordStore
from callplane.security import validate_twilio_signature
from callplane.transports.twilio import run_rest
from callplane.webhooks import pinned_request
from functions.body_limits import read_json

log = logging.getLogger("callplane.outbound")

STATUS_PATH = "/twilio/outbound-status"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
MAX_SIGNATURE_CHARS = 128
"""An ``X-Twilio-Signature`` is base64 of a 20- or 32-byte HMAC: 28 or 44 characters."""


def outbound_routes(
    settings: MediaSettings,
    store: RecordStore,
    state: OutboundState,
    require_api_key: Callable[[str | None], None],
) -> tuple[APIRouter, Dialer]:
    """The routes and the dialer behind them; ``state`` is what every container shares (the
    queue, slots, budget and status reports)."""
    router = APIRouter()
    status_url = settings.public_base_url + STATUS_PATH

    def create_call(job: OutboundJob) -> str:
        """Twilio's Calls.create (blocking SDK; run in a thread)."""
        assert settings.edge_voice_url is not None
        call = (
            settings.twilio()
            .client()
            .calls.create(
                to=job.request.to,
                from_=job.caller_id,
                url=settings.edge_voice_url,
                method="POST",
                status_callback=status_url,
                status_callback_method="POST",
                status_callback_event=STATUS_EVENTS,
                # Wait for the greeting's beep on a machine, so the voicemail starts after it.
                machine_detection="DetectMessageEnd",
                timeout=settings.outbound.ring_timeout_s,
            )
        )
        return str(call.sid)

    async def place(job: OutboundJob) -> str:
        return await run_rest(create_call, job)

    def fetch_call(call_sid: str) -> dict[str, str]:
        """Twilio's Calls(sid).fetch, as the fields a status callback would carry."""
        call = settings.twilio().client().calls(call_sid).fetch()
        fields = {"CallSid": call_sid, "CallStatus": str(call.status or "")}
        if call.answered_by:
            fields["AnsweredBy"] = str(call.answered_by)
        if call.duration is not None:
            fields["CallDuration"] = str(call.duration)
        return fields

    async def fetch_status(call_sid: str) -> dict[str, str]:
        return await run_rest(fetch_call, call_sid)

    async def record_of(call_sid: str) -> dict[str, Any] | None:
        # Twilio's final callback can beat the media stream's close, where the record is saved.
        for _ in range(100):
            record = await store.get_async(call_sid)
            if record is not None:
                return record
            await asyncio.sleep(0.05)
        return None

    async def notify(job: OutboundJob) -> None:
        """POST the finished request to its webhook. The URL was checked when the request
        arrived; it is checked again now (its host resolved afresh, every address public) and
        the POST goes to an address just checked, with the host in ``Host`` and as the TLS
        name, so a name that points elsewhere by now is not followed. Redirects are not
        followed either."""
        url = job.request.webhook_url
        if not url:
            return
        try:
            target = await dialer.check_webhook(url)
        except Refused as refused:
            log.warning("outbound %s: webhook not sent: %s", job.id, refused.reason)
            return
        pinned, headers, extensions = pinned_request(target)
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as http:
                answer = await http.post(
                    pinned, json=job.to_json(), headers=headers, extensions=extensions
                )
                answer.raise_for_status()  # a refusing webhook is a failed delivery, logged
        except httpx.HTTPError as exc:
            log.warning("outbound %s: webhook %s failed: %s", job.id, url, exc)

    dialer = Dialer(
        settings.outbound,
        settings.profiles,
        place,
        record_of,
        state,
        notify,
        fetch_status=fetch_status,
    )

    @router.post("/calls", status_code=202)
    async def create(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        """Call someone: ``{"to", "profile", "context"?, "webhook_url"?, "from"?}``."""
        require_api_key(authorization)
        if settings.edge_voice_url is None:
            raise HTTPException(
                503, "outbound calls need edge_voice_url in the media settings (the edge's URL)"
            )
        document = await read_json(request, "the POST /calls body")
        try:
            body = OutboundRequest.model_validate(document)
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False)) from None
        try:
            job = await dialer.submit(body)
        except CoordinationUnavailable as exc:
            log.error("POST /calls refused: %s", exc)
            raise HTTPException(
                503, f"outbound calls are unavailable: {exc}; nothing was dialled, try again"
            ) from None
        except Refused as refused:
            return JSONResponse(
                {"refused": {"limit": refused.limit, "reason": refused.reason}},
                status_code=refused.status,
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return JSONResponse(job.to_json(), status_code=202)

    @router.get("/outbound/{job_id}")
    async def status(
        job_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        require_api_key(authorization)
        try:
            job = await dialer.job_status(job_id)
        except CoordinationUnavailable as exc:
            raise HTTPException(503, f"outbound status is unavailable: {exc}") from None
        if job is None:
            raise HTTPException(404, f"no outbound request {job_id!r} on this stack")
        return job

    @router.post(STATUS_PATH)
    async def twilio_status(request: Request) -> Response:
        """Twilio's status callbacks for the calls this stack placed. The signature covers the
        form body, so the body must be read to check it: only when a signature is there to
        check, and within the body limit (:class:`functions.body_limits.BodyLimit`)."""
        signature = request.headers.get("x-twilio-signature")
        if not signature or len(signature) > MAX_SIGNATURE_CHARS:
            return Response(
                "missing or malformed X-Twilio-Signature: only Twilio may call this URL\n",
                status_code=403,
            )
        body = (await request.body()).decode("utf-8", "replace")
        form = parse_qs(body, keep_blank_values=True)
        if not validate_twilio_signature(settings.twilio_auth_token, status_url, form, signature):
            return Response("invalid X-Twilio-Signature\n", status_code=403)
        try:
            await dialer.on_status({k: v[0] for k, v in form.items() if v})
        except CoordinationUnavailable as exc:  # the attempt falls back to the REST API
            log.error("status callback not stored: %s", exc)
            return Response(f"status not stored: {exc}\n", status_code=503)
        return Response(status_code=204)

    return router, dialer
