"""The edge's request handling: pure functions on the standard library, no I/O.

The same :func:`handle` runs in the Cloudflare Python Worker (``worker.py``) and under uvicorn
(``asgi.py``); both adapters only translate their request and response types. Keeping the logic
here, free of any runtime, is what lets the offline stack and the tests exercise exactly the code
that answers Twilio in production.

Routes:

* ``POST /twilio/voice``: Twilio's call webhook. Signature checked; our number (``To`` for an
  inbound call, ``From`` for an outbound one) picks the agent profile and media region; the
  answer is TwiML ``<Connect><Stream url="{media}/twilio/media/{key}">`` carrying one
  ``<Parameter name="token">``: a stream token bound to the CallSid that signs the call's
  numbers, country, direction and answering-machine result, whose key is the URL's last
  segment; or ``<Reject reason="rejected"/>`` for a number the edge does not serve. See
  :func:`_voice` for why a replayed webhook cannot open a second session.
* ``POST /twilio/status``: call status callbacks. Signature checked; fields go to ``on_status``.
* ``POST /token`` (and ``OPTIONS``) and ``POST /livekit/webhook``: the web path, in
  :mod:`edge_worker.livekit_routes`. A webhook that calls for an agent returns a
  :class:`~edge_worker.wire.DispatchAgent` in ``EdgeResponse.effects``; the adapter sends
  :func:`~edge_worker.livekit_routes.dispatch_request` for it after answering.
* ``GET /playground/`` and ``GET /playground/<file>``: the built web playground, from the
  read-only mapping the adapter passes as ``playground`` (:mod:`edge_worker.playground`);
  ``GET /`` redirects there.
* ``GET /healthz``: liveness.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from callplane.security import mint_stream_token, stream_url, validate_twilio_signature
from edge_worker import livekit_routes, playground
from edge_worker.config import EdgeConfig
from edge_worker.rate_limit import TokenBucket
from edge_worker.wire import MAX_BODY_BYTES, DispatchAgent, EdgeRequest, EdgeResponse, Headers

__all__ = [
    "MAX_BODY_BYTES",
    "PLAYGROUND_PREFIX",
    "DispatchAgent",
    "EdgeRequest",
    "EdgeResponse",
    "Headers",
    "StatusHandler",
    "declared_too_large",
    "handle",
    "reject_twiml",
    "stream_twiml",
]

StatusHandler = Callable[[dict[str, str]], None]

PLAYGROUND_PREFIX = "/playground/"

_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
# What XML 1.0 cannot hold in a document (its Char production), even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_FORM = "application/x-www-form-urlencoded"


def handle(
    config: EdgeConfig,
    request: EdgeRequest,
    *,
    now: float,
    on_status: StatusHandler | None = None,
    limiter: TokenBucket | None = None,
    playground_files: Mapping[str, bytes] | None = None,
) -> EdgeResponse:
    """Answer one request. ``now`` (Unix seconds) stamps and checks tokens; ``on_status``
    receives each verified status callback's form fields (first value per name) and must not
    block; ``limiter`` rate-limits ``POST /token`` per ``request.client``, failed
    authentications and tokens issued apart (its state belongs to the adapter; None means no
    limit); ``playground_files`` is the built playground (name to bytes). Effects the adapter
    must run after answering are in ``EdgeResponse.effects``.

    Never raises for bad input: a bad signature is 403 (401 for LiveKit's JWTs and web
    credentials), an unknown path 404, a wrong method 405, a non-form Twilio body 415, a body
    over :data:`MAX_BODY_BYTES` 413, a JSON body nested deeper than
    :data:`callplane.bounded_json.MAX_JSON_DEPTH` 400, and a failing ``on_status`` 500. Error
    bodies are plain text naming the problem (and the limit) and never contain secrets or
    tokens.
    """
    call = _Call(config, request, now, on_status, limiter, playground_files or {})
    # "/" exists only as a redirect for browsers, so other methods there stay a plain 404.
    browsing = request.path == "/" and request.method.upper() in ("GET", "HEAD")
    if request.path.startswith(PLAYGROUND_PREFIX) or request.path == "/playground" or browsing:
        route: tuple[tuple[str, ...], Handler] | None = (("GET", "HEAD"), _playground)
    else:
        route = _ROUTES.get(request.path)
    if route is None:
        return _text(404, f"no route for {request.path!r}; routes: {sorted(_ROUTES)}")
    methods, handler = route
    method = request.method.upper()
    if method not in methods:
        allow = ", ".join(methods)
        return _text(405, f"{method} is not allowed on {request.path}; use {allow}", allow=allow)
    return handler(call)


def declared_too_large(headers: Mapping[str, str]) -> EdgeResponse | None:
    """The 413 for a request whose ``Content-Length`` is over :data:`MAX_BODY_BYTES` (or is
    not a number), None otherwise. Adapters ask before they read the body, so that a large
    upload is refused without being received."""
    declared = Headers(headers).get("content-length", "0").strip()
    if declared.isdigit() and int(declared) <= MAX_BODY_BYTES:
        return None
    return _too_large("no request to the edge is that large (webhooks are a few kilobytes)")


def stream_twiml(stream_url: str, parameters: Iterable[tuple[str, str]]) -> str:
    """``<Response><Connect><Stream url=…>`` with ``<Parameter>`` children, byte for byte what
    the ``twilio`` SDK's ``VoiceResponse`` writes for the same input (attributes sorted)."""
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=stream_url)
    for name, value in parameters:
        ET.SubElement(stream, "Parameter", name=name, value=value)
    return _XML_DECLARATION + ET.tostring(response, encoding="unicode")


def reject_twiml() -> str:
    """``<Response><Reject reason="rejected"/></Response>``: Twilio refuses the call without
    answering it, so a number the edge does not serve costs nothing and reaches no agent."""
    response = ET.Element("Response")
    ET.SubElement(response, "Reject", reason="rejected")
    return _XML_DECLARATION + ET.tostring(response, encoding="unicode")


# --------------------------------------------------------------------------- handlers


@dataclass(frozen=True)
class _Call:
    """One request and everything the adapter handed the core for it."""

    config: EdgeConfig
    request: EdgeRequest
    now: float
    on_status: StatusHandler | None
    limiter: TokenBucket | None
    playground_files: Mapping[str, bytes]


Handler = Callable[[_Call], EdgeResponse]


def _voice(call: _Call) -> EdgeResponse:
    """The TwiML for a signed voice webhook.

    Replays: Twilio's signature has no timestamp, and this edge keeps no state (it runs on
    Cloudflare), so the same signed webhook sent again, a minute or a month later, gets a fresh
    token valid for 60 s. That token cannot open a session, for two reasons the media plane
    enforces. First, the stream URL carries the token's key and Twilio signs the upgrade over
    that URL: only Twilio, dialling the call it is connecting, can open it, and a captured
    upgrade signature fits only the token it came with. Second, the token names the CallSid, and
    the media plane admits one stream per CallSid, ever (a claim in the shared state, kept
    longer than any call and token last; the call's record is never replaced). So the window of
    a replayed webhook is nil for a call that had its stream, and even for one that never had
    one, no session opens without Twilio's upgrade.

    Everything the media plane records about the call (numbers, country, direction, the
    answering-machine result) is signed into the token, taken from this signed form; the TwiML
    has no other parameter that anyone could alter.
    """
    config, request, now = call.config, call.request, call.now
    form = _verified_form(config, request)
    if isinstance(form, EdgeResponse):
        return form
    to = _first(form, "To").strip()
    # An outbound call (the agent dials out) runs on our number, which is its From; an
    # inbound one on the number that was called.
    outbound = _first(form, "Direction").startswith("outbound")
    ours = _first(form, "From").strip() if outbound else to
    route = config.numbers.get(ours)
    if route is None:
        return _xml(reject_twiml())
    call_sid = _first(form, "CallSid")
    if not call_sid:
        return _text(400, "the voice webhook has no CallSid; it must come from Twilio")
    # The caller's fields are signed into the stream token: XML (and so TwiML) must be able
    # to carry them too (Twilio never sends a control character; a request that does is refused).
    country_field = "ToCountry" if outbound else "FromCountry"
    for name, value in (
        ("To", to),
        ("From", _first(form, "From")),
        (country_field, _first(form, country_field)),
        ("AnsweredBy", _first(form, "AnsweredBy")),
    ):
        if _NOT_XML.search(value):
            return _text(
                400,
                f"{name}={value[:80]!r} holds a character that XML, and so TwiML, cannot "
                "carry (a control character); Twilio never sends one",
            )
    token = mint_stream_token(
        config.stream_secret,
        call_sid,
        route.profile,
        route.region,
        now=now,
        from_=_first(form, "From"),
        to=to,
        country=_first(form, country_field),
        direction="outbound" if outbound else "inbound",
        answered_by=_first(form, "AnsweredBy"),
    )
    url = stream_url(config.media_stream_url(route.region), token)
    return _xml(stream_twiml(url, [("token", token)]))


def _status(call: _Call) -> EdgeResponse:
    on_status = call.on_status
    form = _verified_form(call.config, call.request)
    if isinstance(form, EdgeResponse):
        return form
    if on_status is not None:
        try:
            on_status({name: values[0] for name, values in form.items() if values})
        except Exception:  # the callback's failure must not leak details to the caller
            return _text(500, "the status callback handler failed; see the edge's own logs")
    return EdgeResponse(204, {}, b"")


def _healthz(call: _Call) -> EdgeResponse:
    body = b"" if call.request.method.upper() == "HEAD" else json.dumps({"ok": True}).encode()
    return EdgeResponse(200, {"content-type": "application/json"}, body)


def _token(call: _Call) -> EdgeResponse:
    if call.request.method.upper() == "OPTIONS":
        return livekit_routes.token_preflight(call.config, call.request)
    return livekit_routes.token(call.config, call.request, call.now, call.limiter)


def _livekit_webhook(call: _Call) -> EdgeResponse:
    if len(call.request.body) > MAX_BODY_BYTES:
        return _too_large("LiveKit never sends that")
    return livekit_routes.livekit_webhook(call.config, call.request, call.now)


def _playground(call: _Call) -> EdgeResponse:
    path = call.request.path
    if path in ("/", "/playground"):
        return EdgeResponse(302, {"location": PLAYGROUND_PREFIX}, b"")
    files = call.playground_files
    name = playground.file_name(path.removeprefix(PLAYGROUND_PREFIX))
    if name is None:
        return _text(400, f"{path!r} is not a plain file path under {PLAYGROUND_PREFIX}")
    content = files.get(name)
    if content is None:
        if not files:
            return _text(
                404,
                f"the playground is not built, so there is no {name!r}: build web/ so that "
                "web/dist/index.html exists, then restart the edge",
            )
        return _text(404, f"the playground has no file {name!r}")
    headers = {
        "content-type": playground.content_type(name),
        "cache-control": "no-cache" if name.endswith(".html") else "public, max-age=300",
        "x-content-type-options": "nosniff",
    }
    body = b"" if call.request.method.upper() == "HEAD" else content
    return EdgeResponse(200, headers, body)


_ROUTES: dict[str, tuple[tuple[str, ...], Handler]] = {
    "/twilio/voice": (("POST",), _voice),
    "/twilio/status": (("POST",), _status),
    "/healthz": (("GET", "HEAD"), _healthz),
    "/token": (("POST", "OPTIONS"), _token),
    "/livekit/webhook": (("POST",), _livekit_webhook),
}


# --------------------------------------------------------------------------- helpers


def _verified_form(config: EdgeConfig, request: EdgeRequest) -> dict[str, list[str]] | EdgeResponse:
    """The form fields of a Twilio-signed form POST, or the error response to send instead."""
    if len(request.body) > MAX_BODY_BYTES:
        return _too_large("Twilio never sends that")
    headers = request.headers if isinstance(request.headers, Headers) else Headers(request.headers)
    # Without a signature there is nothing to check the body against: it is not parsed.
    signature = headers.get("x-twilio-signature")
    if not signature:
        return _text(403, "missing X-Twilio-Signature header: only Twilio may call this URL")
    content_type = headers.get("content-type", _FORM).split(";")[0].strip().lower()
    if content_type != _FORM:
        return _text(
            415,
            f"content type {content_type!r} is not accepted; Twilio webhooks are {_FORM} "
            "(use POST as the webhook method)",
        )
    try:
        form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return _text(400, "the form body is not valid UTF-8")
    url = config.public_url + request.path + (f"?{request.query}" if request.query else "")
    if not validate_twilio_signature(config.twilio_auth_token, url, form, signature):
        return _text(
            403,
            f"invalid X-Twilio-Signature for {url}: the webhook URL configured at Twilio must "
            "be public_url plus the path, and twilio_auth_token must be the account's Auth Token",
        )
    return form


def _too_large(why: str) -> EdgeResponse:
    return _text(413, f"the body is over the limit of {MAX_BODY_BYTES} bytes; {why}")


def _first(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


def _xml(document: str) -> EdgeResponse:
    # The TwiML carries a live stream token: no cache may keep it.
    headers = {"content-type": "text/xml", "cache-control": "no-store"}
    return EdgeResponse(200, headers, document.encode("utf-8"))


def _text(status: int, message: str, *, allow: str | None = None) -> EdgeResponse:
    headers = {"content-type": "text/plain; charset=utf-8"}
    if allow is not None:
        headers["allow"] = allow
    return EdgeResponse(status, headers, (message + "\n").encode("utf-8"))
