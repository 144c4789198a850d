"""The simulator's REST API: the subset of ``api.twilio.com/2010-04-01`` a voice agent uses.

Production code talks to it through the official ``twilio`` SDK with only the base URL and
credentials changed, so the contract is Twilio's, not ours: form-encoded PascalCase requests,
snake_case JSON responses that populate the SDK's resource classes, HTTP Basic auth with the
Account SID and auth token, Twilio's paging fields, and errors as
``{code, message, more_info, status}`` (which the SDK raises as ``TwilioRestException``).

Resources under ``/2010-04-01/Accounts/{AccountSid}/``:

* ``AvailablePhoneNumbers.json``, ``AvailablePhoneNumbers/{Country}.json`` and
  ``AvailablePhoneNumbers/{Country}/{Local|Mobile|TollFree}.json`` (AreaCode, Contains,
  InLocality, Exclude*AddressRequired, VoiceEnabled, PageSize);
* ``IncomingPhoneNumbers.json`` (create, list), ``IncomingPhoneNumbers/{Local|Mobile|TollFree}
  .json`` (typed create and list), ``IncomingPhoneNumbers/{Sid}.json`` (fetch, update, release);
* ``Calls.json`` (create, list) and ``Calls/{Sid}.json`` (fetch, update: redirect with ``Twiml``
  or ``Url``, hang up with ``Status=completed``; delete a finished call).

Beside them: Elastic SIP Trunking under ``/v1/Trunks``
(:mod:`callplane_standins.twilio_simulator.trunking`) and the simulator's own control routes
under ``/_simulator/`` (:mod:`callplane_standins.twilio_simulator.simulator_routes`:
scripted inbound calls, callees, and fault injection from
:mod:`callplane_standins.twilio_simulator.faults`).

Error codes: 20003, 20404, 21421, 21422, 21452, 21458, 21631 and 21649 are the ones
Twilio's error dictionary (https://www.twilio.com/docs/api/errors) gives for these requests;
the others (20001 invalid parameter, 20002 FriendlyName, 20004 method, 21201/21213 missing
To/From, 21205 Url, 21210 From not owned, 21211/21212 invalid To/From, 21218 ApplicationSid,
21220 call state, 21502 callback URL, 12100 TwiML; 20001 also for a TrunkSid that names no
trunk of the account) are the simulator's best choices, not confirmed against Twilio.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from callplane_standins.twilio_simulator.api_input import (
    PageRequest,
    RequestForm,
    authenticate_account,
    not_found,
    simulator_of,
)
from callplane_standins.twilio_simulator.faults import FaultMiddleware
from callplane_standins.twilio_simulator.inventory import (
    NUMBER_TYPE_PATHS,
    Inventory,
    format_friendly,
)
from callplane_standins.twilio_simulator.simulator_routes import SIMULATOR_ROUTES
from callplane_standins.twilio_simulator.state import (
    FINAL_CALL_STATUSES,
    CallResource,
    NumberType,
    PhoneNumberRecord,
    StateStore,
    TwilioApiError,
    new_sid,
    utcnow,
)
from callplane_standins.twilio_simulator.trunking import TRUNKING_ROUTES
from callplane_standins.twilio_simulator.twiml import Instruction, TwimlError, parse_twiml

if TYPE_CHECKING:
    from callplane_standins.twilio_simulator.simulator import Simulator

__all__ = [
    "API_PREFIX",
    "API_ROUTES",
    "call_json",
    "create_rest_app",
    "number_json",
]

API_VERSION = "2010-04-01"
API_PREFIX = f"/{API_VERSION}/Accounts"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
_MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
_TYPE_JSON: dict[NumberType, str] = {"local": "local", "mobile": "mobile", "toll_free": "tollfree"}


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _date(dt: datetime | None) -> str | None:
    return None if dt is None else format_datetime(dt)


def number_json(n: PhoneNumberRecord) -> dict[str, object]:
    """An IncomingPhoneNumber resource in Twilio's field names."""
    base = f"{API_PREFIX}/{n.account_sid}/IncomingPhoneNumbers/{n.sid}"
    caps = n.capabilities
    return {
        "account_sid": n.account_sid,
        "address_requirements": n.address_requirements,
        "address_sid": n.address_sid,
        "api_version": API_VERSION,
        "beta": n.beta,
        "bundle_sid": n.bundle_sid,
        "capabilities": {k: bool(caps.get(k, False)) for k in ("voice", "sms", "mms", "fax")},
        "date_created": _date(n.date_created),
        "date_updated": _date(n.date_updated),
        "emergency_address_sid": None,
        "emergency_address_status": "unregistered",
        "emergency_status": "Inactive",
        "friendly_name": n.friendly_name,
        "identity_sid": None,
        "origin": "twilio",
        "phone_number": n.phone_number,
        "sid": n.sid,
        "sms_application_sid": "",
        "sms_fallback_method": "POST",
        "sms_fallback_url": "",
        "sms_method": "POST",
        "sms_url": "",
        "status": "in-use",
        "status_callback": n.status_callback,
        "status_callback_method": n.status_callback_method,
        "subresource_uris": {"assigned_add_ons": f"{base}/AssignedAddOns.json"},
        "trunk_sid": n.trunk_sid,
        "type": _TYPE_JSON[n.number_type],
        "uri": f"{base}.json",
        "voice_application_sid": n.voice_application_sid,
        "voice_caller_id_lookup": False,
        "voice_fallback_method": n.voice_fallback_method,
        "voice_fallback_url": n.voice_fallback_url,
        "voice_method": n.voice_method,
        "voice_receive_mode": "voice",
        "voice_url": n.voice_url,
    }


def call_json(c: CallResource) -> dict[str, object]:
    """A Call resource in Twilio's field names."""
    base = f"{API_PREFIX}/{c.account_sid}/Calls/{c.sid}"
    return {
        "account_sid": c.account_sid,
        "annotation": None,
        "answered_by": c.answered_by,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": _date(c.date_created),
        "date_updated": _date(c.date_updated),
        "direction": c.direction,
        "duration": None if c.duration is None else str(c.duration),
        "end_time": _date(c.end_time),
        "forwarded_from": None,
        "from": c.from_number,
        "from_formatted": format_friendly(c.from_number),
        "group_sid": None,
        "parent_call_sid": c.parent_call_sid,
        "phone_number_sid": c.phone_number_sid,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": c.sid,
        "start_time": _date(c.start_time),
        "status": c.status,
        "subresource_uris": {
            "notifications": f"{base}/Notifications.json",
            "recordings": f"{base}/Recordings.json",
            "streams": f"{base}/Streams.json",
            "events": f"{base}/Events.json",
        },
        "to": c.to,
        "to_formatted": format_friendly(c.to),
        "trunk_sid": None,
        "uri": f"{base}.json",
    }


# --------------------------------------------------------------------------------------
# Lists and lookups shared by the routes
# --------------------------------------------------------------------------------------


def _page(
    request: Request, key: str, items: list[dict[str, object]], query: RequestForm
) -> dict[str, object]:
    """Twilio's 2010-04-01 list envelope: records under ``key`` beside relative
    ``*_page_uri`` fields (``next_page_uri`` when more remain); filters are kept in them."""
    req = PageRequest.from_query(query)
    chunk = req.window(items)
    filters = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in ("Page", "PageSize", "PageToken")
    ]

    def uri(p: int) -> str:
        q = urlencode([*filters, ("PageSize", str(req.page_size)), ("Page", str(p))])
        return f"{request.url.path}?{q}"

    return {
        key: chunk,
        "end": req.start + max(len(chunk) - 1, 0),
        "first_page_uri": uri(0),
        "next_page_uri": uri(req.page + 1) if req.has_more(len(items)) else None,
        "page": req.page,
        "page_size": req.page_size,
        "previous_page_uri": uri(req.page - 1) if req.page > 0 else None,
        "start": req.start,
        "uri": uri(req.page),
    }


def _pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """IncomingPhoneNumbers ``PhoneNumber`` filter: exact, or partial with ``*`` wildcards."""
    if _E164.match(pattern):
        return lambda number: number == pattern
    regex = re.compile(".*".join(re.escape(p) for p in pattern.split("*")))
    return lambda number: regex.search(number) is not None


def _path_account(request: Request) -> str:
    """The ``{account_sid}`` of an account-scoped path, authenticated."""
    return authenticate_account(request, request.path_params["account_sid"])


def _owned_number(store: StateStore, acct: str, sid: str, path: str) -> PhoneNumberRecord:
    number = store.account(acct).numbers.get(sid)
    if number is None:
        raise not_found(path)
    return number


def _owned_call(store: StateStore, acct: str, sid: str, path: str) -> CallResource:
    call = store.account(acct).calls.get(sid)
    if call is None:
        raise not_found(path)
    return call


def _parse_inline_twiml(raw: str) -> list[Instruction]:
    try:
        return parse_twiml(raw)
    except TwimlError as exc:
        raise TwilioApiError(400, 12100, f"Twiml is not valid: {exc}") from None


# --------------------------------------------------------------------------------------
# Account
# --------------------------------------------------------------------------------------


async def fetch_account(request: Request) -> Response:
    acct = _path_account(request)
    base = f"{API_PREFIX}/{acct}"
    return JSONResponse(
        {
            "sid": acct,
            "owner_account_sid": acct,
            "friendly_name": "callplane simulator account",
            "status": "active",
            "type": "Full",
            "auth_token": None,
            "date_created": _date(utcnow()),
            "date_updated": _date(utcnow()),
            "uri": f"{base}.json",
            "subresource_uris": {
                "available_phone_numbers": f"{base}/AvailablePhoneNumbers.json",
                "calls": f"{base}/Calls.json",
                "incoming_phone_numbers": f"{base}/IncomingPhoneNumbers.json",
            },
        }
    )


# --------------------------------------------------------------------------------------
# AvailablePhoneNumbers
# --------------------------------------------------------------------------------------


def _country_json(inventory: Inventory, acct: str, country: str) -> dict[str, object]:
    base = f"{API_PREFIX}/{acct}/AvailablePhoneNumbers/{country}"
    return {
        "country_code": country,
        "country": inventory.country_name(country),
        "uri": f"{base}.json",
        "beta": False,
        "subresource_uris": {
            inventory.subresource_key(t): f"{base}/{inventory.type_path(t)}.json"
            for t in inventory.types_in_stock(country)
        },
    }


async def list_countries(request: Request) -> Response:
    acct = _path_account(request)
    inventory = simulator_of(request).inventory
    countries = [_country_json(inventory, acct, c) for c in inventory.countries()]
    return JSONResponse(_page(request, "countries", countries, RequestForm.from_query(request)))


async def fetch_country(request: Request) -> Response:
    acct = _path_account(request)
    inventory = simulator_of(request).inventory
    country = request.path_params["country"]
    if country not in inventory.countries():
        raise not_found(request.url.path)
    return JSONResponse(_country_json(inventory, acct, country))


async def search_numbers(request: Request) -> Response:
    _path_account(request)
    sim = simulator_of(request)
    number_type = NUMBER_TYPE_PATHS.get(request.path_params["kind"])
    if number_type is None:
        raise not_found(request.url.path)
    q = RequestForm.from_query(request)
    page_size = q.integer("PageSize", 50, 1, 1000)
    exclude = bool(
        q.boolean("ExcludeAllAddressRequired")
        or q.boolean("ExcludeLocalAddressRequired")
        or q.boolean("ExcludeForeignAddressRequired")
    )
    try:
        found = sim.inventory.search(
            request.path_params["country"],
            number_type,
            taken=sim.store.taken(),
            area_code=q.text("AreaCode"),
            contains=q.text("Contains"),
            in_locality=q.text("InLocality"),
            exclude_address_required=exclude,
            limit=page_size,
        )
    except TwilioApiError as exc:
        if exc.status == 404:
            raise TwilioApiError(
                404,
                20404,
                f"The requested resource {request.url.path} "
                f"was not found ({exc.message.split(': ', 1)[-1]})",
            ) from None
        raise
    if q.boolean("VoiceEnabled") and found and not found[0].offer.capabilities.get("voice"):
        found = []
    body = _page(request, "available_phone_numbers", [n.to_json() for n in found], q)
    body["next_page_uri"] = None
    return JSONResponse(body)


# --------------------------------------------------------------------------------------
# IncomingPhoneNumbers
# --------------------------------------------------------------------------------------


def _apply_number_fields(form: RequestForm, fields: dict[str, object]) -> None:
    """Validate the updatable IncomingPhoneNumber parameters present in ``form``."""
    name = form.text("FriendlyName")
    if name is not None:
        if len(name) > 64:
            raise TwilioApiError(
                400, 20002, f"FriendlyName {name[:20]!r}… is {len(name)} characters; max 64"
            )
        fields["friendly_name"] = name
    for param, attr in (
        ("VoiceUrl", "voice_url"),
        ("VoiceFallbackUrl", "voice_fallback_url"),
        ("StatusCallback", "status_callback"),
    ):
        if form.has(param):
            fields[attr] = form.url(param) or ""
    for param, attr in (
        ("VoiceMethod", "voice_method"),
        ("VoiceFallbackMethod", "voice_fallback_method"),
        ("StatusCallbackMethod", "status_callback_method"),
    ):
        method = form.method(param)
        if method is not None:
            fields[attr] = method
    if form.has("TrunkSid"):
        fields["trunk_sid"] = form.sid("TrunkSid", "TK") or None
        if fields["trunk_sid"]:
            fields["voice_application_sid"] = None
    if form.has("VoiceApplicationSid"):
        fields["voice_application_sid"] = form.sid("VoiceApplicationSid", "AP") or None
        if fields["voice_application_sid"]:
            fields["trunk_sid"] = None


def _check_trunk(store: StateStore, acct: str, fields: Mapping[str, object]) -> None:
    """A ``TrunkSid`` must name one of the account's Elastic SIP Trunks."""
    trunk_sid = fields.get("trunk_sid")
    if isinstance(trunk_sid, str) and trunk_sid not in store.account(acct).trunks:
        raise TwilioApiError(
            400,
            20001,
            f"TrunkSid {trunk_sid} is not an Elastic SIP Trunk of account {acct}: create it "
            "with POST /v1/Trunks first",
        )


async def _create_number(request: Request, acct: str, typed: NumberType | None) -> Response:
    sim = simulator_of(request)
    store, inventory = sim.store, sim.inventory
    form = await RequestForm.from_body(request)
    phone_number = form.e164("PhoneNumber", 21421)
    area_code = form.text("AreaCode")
    if phone_number is None and not area_code:
        raise TwilioApiError(400, 20001, "A PhoneNumber or an AreaCode is required")
    taken = store.taken()
    if phone_number is None:
        assert area_code is not None
        try:
            found = inventory.search(
                "US", typed or "local", taken=taken, area_code=area_code, limit=1
            )
        except TwilioApiError as exc:
            if exc.status == 404:
                found = []
            else:
                raise
        if not found:
            raise TwilioApiError(400, 21452, f"No phone numbers found in AreaCode {area_code!r}")
        candidate = found[0]
    else:
        entry = inventory.lookup(phone_number)
        if entry is None or phone_number in taken:
            raise TwilioApiError(400, 21422, f"PhoneNumber {phone_number} is not available")
        candidate = entry
    if typed is not None and candidate.offer.number_type != typed:
        raise TwilioApiError(
            400,
            21458,
            f"PhoneNumber {candidate.phone_number} is a "
            f"{candidate.offer.number_type.replace('_', '-')} number and cannot be bought "
            f"through IncomingPhoneNumbers/{inventory.type_path(typed)}",
        )
    bundle_sid = form.text("BundleSid") or None
    address_sid = form.text("AddressSid") or None
    inventory.check_purchase(candidate, bundle_sid, address_sid)
    fields: dict[str, object] = {}
    _apply_number_fields(form, fields)
    _check_trunk(store, acct, fields)
    now = utcnow()
    record = PhoneNumberRecord(
        sid=new_sid("PN"),
        account_sid=acct,
        phone_number=candidate.phone_number,
        friendly_name=format_friendly(candidate.phone_number),
        iso_country=candidate.offer.country,
        number_type=candidate.offer.number_type,
        locality=candidate.block.locality,
        region=candidate.block.region,
        bundle_sid=bundle_sid,
        address_sid=address_sid,
        address_requirements=candidate.offer.address_requirements,
        capabilities=dict(candidate.offer.capabilities),
        beta=candidate.offer.beta,
        date_created=now,
        date_updated=now,
    ).model_copy(update=fields)
    with store.lock:
        if record.phone_number in store.taken():  # bought meanwhile
            raise TwilioApiError(400, 21422, f"PhoneNumber {record.phone_number} is not available")
        store.account(acct).numbers[record.sid] = record
    await store.save_async()
    return JSONResponse(number_json(record), status_code=201)


def _list_numbers(request: Request, acct: str, typed: NumberType | None) -> Response:
    store = simulator_of(request).store
    q = RequestForm.from_query(request)
    # Insertion order is purchase order (dates only have second resolution).
    numbers: Iterable[PhoneNumberRecord] = list(store.account(acct).numbers.values())
    pattern = q.text("PhoneNumber")
    if pattern:
        match = _pattern_matcher(pattern.strip())
        numbers = [n for n in numbers if match(n.phone_number)]
    name = q.text("FriendlyName")
    if name:
        numbers = [n for n in numbers if n.friendly_name == name]
    if typed is not None:
        numbers = [n for n in numbers if n.number_type == typed]
    items = [number_json(n) for n in numbers]
    return JSONResponse(_page(request, "incoming_phone_numbers", items, q))


async def list_incoming(request: Request) -> Response:
    return _list_numbers(request, _path_account(request), None)


async def create_incoming(request: Request) -> Response:
    return await _create_number(request, _path_account(request), None)


async def fetch_incoming(request: Request) -> Response:
    """One number, or (``Local``, ``Mobile``, ``TollFree`` in the SID's place) a typed list."""
    acct = _path_account(request)
    sid = request.path_params["sid"]
    if sid in NUMBER_TYPE_PATHS:
        return _list_numbers(request, acct, NUMBER_TYPE_PATHS[sid])
    store = simulator_of(request).store
    return JSONResponse(number_json(_owned_number(store, acct, sid, request.url.path)))


async def update_incoming(request: Request) -> Response:
    """Update one number, or (a number type in the SID's place) buy one of that type."""
    acct = _path_account(request)
    sid = request.path_params["sid"]
    if sid in NUMBER_TYPE_PATHS:
        return await _create_number(request, acct, NUMBER_TYPE_PATHS[sid])
    store = simulator_of(request).store
    number = _owned_number(store, acct, sid, request.url.path)
    form = await RequestForm.from_body(request)
    fields: dict[str, object] = {}
    _apply_number_fields(form, fields)
    _check_trunk(store, acct, fields)
    if form.has("BundleSid"):
        fields["bundle_sid"] = form.sid("BundleSid", "BU", 21649) or None
    if form.has("AddressSid"):
        fields["address_sid"] = form.sid("AddressSid", "AD", 21631) or None
    fields["date_updated"] = utcnow()
    updated = number.model_copy(update=fields)
    with store.lock:
        store.account(acct).numbers[sid] = updated
    await store.save_async()
    return JSONResponse(number_json(updated))


async def release_incoming(request: Request) -> Response:
    acct = _path_account(request)
    sid = request.path_params["sid"]
    store = simulator_of(request).store
    _owned_number(store, acct, sid, request.url.path)
    with store.lock:
        del store.account(acct).numbers[sid]
    await store.save_async()
    return Response(status_code=204)


# --------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------


async def create_call(request: Request) -> Response:
    acct = _path_account(request)
    sim = simulator_of(request)
    store = sim.store
    form = await RequestForm.from_body(request)
    if not form.text("To"):
        raise TwilioApiError(400, 21201, "A 'To' phone number is required")
    if not form.text("From"):
        raise TwilioApiError(400, 21213, "A 'From' phone number is required")
    to = form.e164("To", 21211)
    from_ = form.e164("From", 21212)
    assert to is not None and from_ is not None
    if form.text("ApplicationSid"):
        raise TwilioApiError(
            400, 21218, "ApplicationSid is not supported by the simulator; use Url or Twiml"
        )
    url = form.url("Url", 21205) or ""
    twiml_raw = form.text("Twiml")
    if not url and not twiml_raw:
        raise TwilioApiError(400, 21205, "Url or Twiml is required")
    instructions = _parse_inline_twiml(twiml_raw) if twiml_raw else None
    method = form.method("Method") or "POST"
    status_callback = form.url("StatusCallback") or ""
    events: list[str] = []
    for raw in form.values("StatusCallbackEvent"):
        for ev in raw.split():
            if ev not in _STATUS_EVENTS:
                raise TwilioApiError(
                    400,
                    20001,
                    f"StatusCallbackEvent {ev!r} is not one of {', '.join(_STATUS_EVENTS)}",
                )
            events.append(ev)
    timeout = form.integer("Timeout", 60, 1, 600)
    machine_detection = form.text("MachineDetection")
    if machine_detection and machine_detection not in _MACHINE_DETECTION:
        raise TwilioApiError(
            400,
            20001,
            f"MachineDetection {machine_detection!r} must be Enable or DetectMessageEnd",
        )
    source = store.find_number(from_)
    if source is None or source.account_sid != acct:
        raise TwilioApiError(
            400,
            21210,
            f"From {from_} is not a phone number of account {acct} (the simulator only "
            "lets an account call from numbers it owns)",
        )
    callee = sim.callee(to)
    record = CallResource(
        sid=new_sid("CA"),
        account_sid=acct,
        from_number=from_,
        to=to,
        direction="outbound-api",
        status="queued",
        status_callback=status_callback,
        status_callback_method=form.method("StatusCallbackMethod") or "POST",
        status_callback_events=events or ["completed"],
    )
    store.put_call(record)
    await store.save_async()
    await sim.carrier.start_outbound(
        record,
        url=url,
        method=method,
        instructions=instructions,
        callee=callee,
        machine_detection=machine_detection or None,
        ring_timeout_s=min(float(timeout), sim.unanswered_ring_s),
    )
    return JSONResponse(call_json(record), status_code=201)


async def list_calls(request: Request) -> Response:
    acct = _path_account(request)
    store = simulator_of(request).store
    q = RequestForm.from_query(request)
    calls = list(reversed(store.account(acct).calls.values()))  # newest first
    for param, attr in (
        ("To", "to"),
        ("From", "from_number"),
        ("Status", "status"),
        ("ParentCallSid", "parent_call_sid"),
    ):
        value = q.text(param)
        if value:
            calls = [c for c in calls if getattr(c, attr) == value]
    return JSONResponse(_page(request, "calls", [call_json(c) for c in calls], q))


async def fetch_call(request: Request) -> Response:
    acct = _path_account(request)
    store = simulator_of(request).store
    sid = request.path_params["sid"]
    return JSONResponse(call_json(_owned_call(store, acct, sid, request.url.path)))


async def update_call(request: Request) -> Response:
    """Hang up (``Status``) or redirect (``Twiml``/``Url``) a live call."""
    acct = _path_account(request)
    sim = simulator_of(request)
    sid = request.path_params["sid"]
    path = request.url.path
    _owned_call(sim.store, acct, sid, path)
    form = await RequestForm.from_body(request)
    status = form.text("Status")
    if status is not None and status not in ("completed", "canceled"):
        raise TwilioApiError(400, 20001, f"Status {status!r} must be completed or canceled")
    twiml_raw = form.text("Twiml")
    url = form.url("Url", 21205)
    method = form.method("Method") or "POST"
    live = sim.carrier.live(sid)
    if status is not None:
        if live is not None and (status == "completed" or live.status in ("queued", "ringing")):
            live.hang_up("rest", f"REST update Status={status}")
            with contextlib.suppress(TimeoutError):
                await live.wait_ended(timeout_s=5)
        return JSONResponse(call_json(_owned_call(sim.store, acct, sid, path)))
    if twiml_raw or url:
        instructions = _parse_inline_twiml(twiml_raw) if twiml_raw else None
        if live is None or live.status != "in-progress":
            raise TwilioApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
        live.redirect(instructions, url or "", method)
    return JSONResponse(call_json(_owned_call(sim.store, acct, sid, path)))


async def delete_call(request: Request) -> Response:
    acct = _path_account(request)
    store = simulator_of(request).store
    sid = request.path_params["sid"]
    call = _owned_call(store, acct, sid, request.url.path)
    if call.status not in FINAL_CALL_STATUSES:
        raise TwilioApiError(
            400, 21220, f"Call {sid} is {call.status}; only ended calls can be deleted"
        )
    with store.lock:
        del store.account(acct).calls[sid]
    await store.save_async()
    return Response(status_code=204)


# --------------------------------------------------------------------------------------
# Errors in Twilio's shape
# --------------------------------------------------------------------------------------


async def _twilio_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TwilioApiError)
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if exc.status == 401 else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (no such path, wrong method) as Twilio's error JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        err = TwilioApiError(
            405, 20004, f"Method {request.method} is not allowed on {request.url.path}"
        )
    elif exc.status_code == 404:
        err = not_found(request.url.path)
    else:
        err = TwilioApiError(exc.status_code, 20001, str(exc.detail))
    return JSONResponse(err.to_json(), status_code=err.status)


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------

_ACCOUNT = API_PREFIX + "/{account_sid}"

API_ROUTES: list[BaseRoute] = [
    Route(_ACCOUNT + ".json", fetch_account, methods=["GET"]),
    Route(_ACCOUNT + "/AvailablePhoneNumbers.json", list_countries, methods=["GET"]),
    Route(_ACCOUNT + "/AvailablePhoneNumbers/{country}.json", fetch_country, methods=["GET"]),
    Route(
        _ACCOUNT + "/AvailablePhoneNumbers/{country}/{kind}.json", search_numbers, methods=["GET"]
    ),
    Route(_ACCOUNT + "/IncomingPhoneNumbers.json", list_incoming, methods=["GET"]),
    Route(_ACCOUNT + "/IncomingPhoneNumbers.json", create_incoming, methods=["POST"]),
    Route(_ACCOUNT + "/IncomingPhoneNumbers/{sid}.json", fetch_incoming, methods=["GET"]),
    Route(_ACCOUNT + "/IncomingPhoneNumbers/{sid}.json", update_incoming, methods=["POST"]),
    Route(_ACCOUNT + "/IncomingPhoneNumbers/{sid}.json", release_incoming, methods=["DELETE"]),
    Route(_ACCOUNT + "/Calls.json", create_call, methods=["POST"]),
    Route(_ACCOUNT + "/Calls.json", list_calls, methods=["GET"]),
    Route(_ACCOUNT + "/Calls/{sid}.json", fetch_call, methods=["GET"]),
    Route(_ACCOUNT + "/Calls/{sid}.json", update_call, methods=["POST"]),
    Route(_ACCOUNT + "/Calls/{sid}.json", delete_call, methods=["DELETE"]),
]
"""The ``api`` domain (``/2010-04-01/Accounts/...``): path, handler, method."""


def create_rest_app(sim: Simulator) -> Starlette:
    """The REST API of ``sim`` as an ASGI app (served by :meth:`Simulator.start`): the ``api``
    domain above, the ``trunking`` subset
    (:mod:`callplane_standins.twilio_simulator.trunking`) and the ``/_simulator/`` control
    routes, behind the fault middleware (:mod:`callplane_standins.twilio_simulator.faults`).

    The handlers are plain functions of the request; they find ``sim`` in ``app.state``.
    """
    app = Starlette(
        routes=[*API_ROUTES, *TRUNKING_ROUTES, *SIMULATOR_ROUTES],
        middleware=[Middleware(FaultMiddleware, faults=sim.faults)],
        exception_handlers={
            TwilioApiError: _twilio_error,
            StarletteHTTPException: _http_error,
        },
    )
    app.state.sim = sim
    return app
