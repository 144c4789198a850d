"""The simulator's Elastic SIP Trunking subset: ``trunking.twilio.com/v1`` as the ``twilio``
SDK's ``trunking.v1`` client calls it (https://www.twilio.com/docs/sip-trunking/api).

Point the SDK at it with ``client.trunking.base_url = sim.base_url`` (as ``api.base_url`` for
numbers). Resources, all under ``/v1``:

* ``Trunks`` (create, list) and ``Trunks/{TK}`` (fetch, update, delete);
* ``Trunks/{TK}/OriginationUrls`` (create, list) and ``.../{OU}`` (fetch, update, delete):
  where Twilio sends the trunk's inbound calls; ``SipUrl``, ``Priority``, ``Weight``,
  ``Enabled`` and ``FriendlyName`` are all required on create, as on Twilio;
* ``Trunks/{TK}/PhoneNumbers`` (associate with ``PhoneNumberSid``, list) and ``.../{PN}``
  (fetch, disassociate). The association is the number's own ``trunk_sid``, so setting
  ``TrunkSid`` on the IncomingPhoneNumber shows here too, and the reverse.

Paging is v1's ``meta`` envelope (``meta.key`` names the list, absolute ``next_page_url``).
Authentication is HTTP Basic with an account's SID and token; a trunk belongs to that account.

Deleting a trunk releases its numbers from it (their ``trunk_sid`` is cleared). Calls to a
trunked number are not carried over SIP: the carrier fails them with a clear error, since the
simulator speaks no SIP. Error codes: 20003 and 20404 are Twilio's; 20001 for an invalid
parameter is the simulator's choice (Twilio's exact codes for trunking were not checked).
"""

from __future__ import annotations

import re
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from callplane_standins.twilio_simulator.api_input import (
    PageRequest,
    RequestForm,
    basic_account,
    not_found,
    simulator_of,
)
from callplane_standins.twilio_simulator.state import (
    OriginationUrlRecord,
    PhoneNumberRecord,
    StateStore,
    TrunkRecord,
    TwilioApiError,
    new_sid,
    utcnow,
)

__all__ = [
    "TRUNKING_PREFIX",
    "TRUNKING_ROUTES",
    "origination_url_json",
    "trunk_json",
    "trunk_number_json",
]

TRUNKING_PREFIX = "/v1/Trunks"
_TRANSFER_MODES = ("disable-all", "enable-all", "sip-only")
_TRANSFER_CALLER_IDS = ("from-transferee", "from-transferor")
_SIP_URL = re.compile(r"^sips?:[^\s]+$")


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def trunk_json(t: TrunkRecord, base: str) -> dict[str, object]:
    """A Trunk resource in Twilio's field names; ``base`` is the server's own origin."""
    url = f"{base}{TRUNKING_PREFIX}/{t.sid}"
    return {
        "account_sid": t.account_sid,
        "auth_type": "",
        "auth_type_set": [],
        "cnam_lookup_enabled": t.cnam_lookup_enabled,
        "date_created": _iso(t.date_created),
        "date_updated": _iso(t.date_updated),
        "disaster_recovery_method": t.disaster_recovery_method,
        "disaster_recovery_url": t.disaster_recovery_url,
        "domain_name": t.domain_name,
        "friendly_name": t.friendly_name,
        "links": {
            "origination_urls": f"{url}/OriginationUrls",
            "credential_lists": f"{url}/CredentialLists",
            "ip_access_control_lists": f"{url}/IpAccessControlLists",
            "phone_numbers": f"{url}/PhoneNumbers",
            "recording": f"{url}/Recording",
        },
        "recording": {"mode": "do-not-record", "trim": "do-not-trim"},
        "secure": t.secure,
        "sid": t.sid,
        "symmetric_rtp_enabled": t.symmetric_rtp_enabled,
        "transfer_caller_id": t.transfer_caller_id,
        "transfer_mode": t.transfer_mode,
        "url": url,
    }


def origination_url_json(o: OriginationUrlRecord, base: str) -> dict[str, object]:
    """An OriginationUrl resource in Twilio's field names."""
    return {
        "account_sid": o.account_sid,
        "date_created": _iso(o.date_created),
        "date_updated": _iso(o.date_updated),
        "enabled": o.enabled,
        "friendly_name": o.friendly_name,
        "priority": o.priority,
        "sid": o.sid,
        "sip_url": o.sip_url,
        "trunk_sid": o.trunk_sid,
        "url": f"{base}{TRUNKING_PREFIX}/{o.trunk_sid}/OriginationUrls/{o.sid}",
        "weight": o.weight,
    }


def trunk_number_json(n: PhoneNumberRecord, base: str) -> dict[str, object]:
    """A trunk's PhoneNumber resource (the IncomingPhoneNumber seen from the trunk)."""
    url = f"{base}{TRUNKING_PREFIX}/{n.trunk_sid}/PhoneNumbers/{n.sid}"
    return {
        "account_sid": n.account_sid,
        "address_requirements": n.address_requirements,
        "api_version": "2010-04-01",
        "beta": n.beta,
        "capabilities": {k: bool(n.capabilities.get(k, False)) for k in ("voice", "sms", "mms")},
        "date_created": _iso(n.date_created),
        "date_updated": _iso(n.date_updated),
        "friendly_name": n.friendly_name,
        "links": {"phone_number": url},
        "phone_number": n.phone_number,
        "sid": n.sid,
        "sms_application_sid": None,
        "sms_fallback_method": "POST",
        "sms_fallback_url": None,
        "sms_method": "POST",
        "sms_url": None,
        "status_callback": n.status_callback,
        "status_callback_method": n.status_callback_method,
        "trunk_sid": n.trunk_sid,
        "url": url,
        "voice_application_sid": n.voice_application_sid,
        "voice_caller_id_lookup": False,
        "voice_fallback_method": n.voice_fallback_method,
        "voice_fallback_url": n.voice_fallback_url,
        "voice_method": n.voice_method,
        "voice_url": n.voice_url,
    }


def _meta_page(
    request: Request, key: str, items: list[dict[str, object]], query: RequestForm
) -> dict[str, object]:
    """v1's list envelope: the records under ``key`` and a ``meta`` block with absolute URLs
    (unlike 2010-04-01's relative ``*_page_uri`` fields, and without the list's filters)."""
    req = PageRequest.from_query(query)
    base = str(request.base_url).rstrip("/") + request.url.path

    def url(p: int) -> str:
        return f"{base}?PageSize={req.page_size}&Page={p}"

    return {
        key: req.window(items),
        "meta": {
            "first_page_url": url(0),
            "key": key,
            "next_page_url": url(req.page + 1) if req.has_more(len(items)) else None,
            "page": req.page,
            "page_size": req.page_size,
            "previous_page_url": url(req.page - 1) if req.page > 0 else None,
            "url": url(req.page),
        },
    }


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _caller(request: Request) -> tuple[str, StateStore]:
    """The authenticated account (a trunk belongs to the account that created it) and the
    store."""
    sim = simulator_of(request)
    return basic_account(request, sim.tokens), sim.store


def _trunk_of(store: StateStore, acct: str, sid: str, path: str) -> TrunkRecord:
    trunk = store.account(acct).trunks.get(sid)
    if trunk is None:
        raise not_found(path)
    return trunk


def _path_trunk(request: Request, store: StateStore, acct: str) -> TrunkRecord:
    """The trunk ``{trunk_sid}`` of a sub-resource path names (404 unless it is ``acct``'s)."""
    return _trunk_of(store, acct, request.path_params["trunk_sid"], request.url.path)


# --------------------------------------------------------------------------------------
# Trunks
# --------------------------------------------------------------------------------------


def _apply_trunk_fields(store: StateStore, form: RequestForm, fields: dict[str, object]) -> None:
    name = form.text("FriendlyName")
    if name is not None:
        if len(name) > 64:
            raise TwilioApiError(
                400, 20001, f"FriendlyName {name[:20]!r}… is {len(name)} characters; max 64"
            )
        fields["friendly_name"] = name
    domain = form.text("DomainName")
    if domain is not None:
        if domain and not re.fullmatch(r"[a-z0-9][a-z0-9-]*\.pstn\.twilio\.com", domain):
            raise TwilioApiError(
                400,
                20001,
                f"DomainName {domain!r} must be <name>.pstn.twilio.com (lower case letters, "
                "digits and '-')",
            )
        taken = {t.domain_name for a in store.state.accounts.values() for t in a.trunks.values()}
        if domain and domain in taken:
            raise TwilioApiError(400, 20001, f"DomainName {domain!r} is already in use")
        fields["domain_name"] = domain or None
    if form.has("DisasterRecoveryUrl"):
        fields["disaster_recovery_url"] = form.url("DisasterRecoveryUrl", 20001) or None
    method = form.method("DisasterRecoveryMethod")
    if method is not None:
        fields["disaster_recovery_method"] = method
    for param, attr, allowed in (
        ("TransferMode", "transfer_mode", _TRANSFER_MODES),
        ("TransferCallerId", "transfer_caller_id", _TRANSFER_CALLER_IDS),
    ):
        value = form.text(param)
        if value is not None:
            if value not in allowed:
                raise TwilioApiError(
                    400, 20001, f"{param} {value!r} must be one of {', '.join(allowed)}"
                )
            fields[attr] = value
    for param, attr in (("Secure", "secure"), ("CnamLookupEnabled", "cnam_lookup_enabled")):
        flag = form.boolean(param)
        if flag is not None:
            fields[attr] = flag


async def create_trunk(request: Request) -> Response:
    acct, store = _caller(request)
    form = await RequestForm.from_body(request)
    fields: dict[str, object] = {}
    _apply_trunk_fields(store, form, fields)
    trunk = TrunkRecord(sid=new_sid("TK"), account_sid=acct).model_copy(update=fields)
    with store.lock:
        store.account(acct).trunks[trunk.sid] = trunk
    await store.save_async()
    return JSONResponse(trunk_json(trunk, _origin(request)), status_code=201)


async def list_trunks(request: Request) -> Response:
    acct, store = _caller(request)
    trunks = [trunk_json(t, _origin(request)) for t in store.account(acct).trunks.values()]
    return JSONResponse(_meta_page(request, "trunks", trunks, RequestForm.from_query(request)))


async def fetch_trunk(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _trunk_of(store, acct, request.path_params["sid"], request.url.path)
    return JSONResponse(trunk_json(trunk, _origin(request)))


async def update_trunk(request: Request) -> Response:
    acct, store = _caller(request)
    sid = request.path_params["sid"]
    trunk = _trunk_of(store, acct, sid, request.url.path)
    form = await RequestForm.from_body(request)
    fields: dict[str, object] = {"date_updated": utcnow()}
    if form.text("DomainName") == trunk.domain_name:
        form = _without(form, "DomainName")  # re-sending its own domain is no conflict
    _apply_trunk_fields(store, form, fields)
    updated = trunk.model_copy(update=fields)
    with store.lock:
        store.account(acct).trunks[sid] = updated
    await store.save_async()
    return JSONResponse(trunk_json(updated, _origin(request)))


async def delete_trunk(request: Request) -> Response:
    """Delete a trunk; its numbers stay the account's, no longer on any trunk."""
    acct, store = _caller(request)
    sid = request.path_params["sid"]
    _trunk_of(store, acct, sid, request.url.path)
    with store.lock:
        account = store.account(acct)
        del account.trunks[sid]
        for number in list(account.numbers.values()):
            if number.trunk_sid == sid:
                account.numbers[number.sid] = number.model_copy(
                    update={"trunk_sid": None, "date_updated": utcnow()}
                )
    await store.save_async()
    return Response(status_code=204)


# --------------------------------------------------------------------------------------
# Origination URLs
# --------------------------------------------------------------------------------------


def _origination_fields(form: RequestForm, *, create: bool) -> dict[str, object]:
    fields: dict[str, object] = {}
    if create:
        missing = [
            p
            for p in ("SipUrl", "Priority", "Weight", "Enabled", "FriendlyName")
            if not form.text(p)
        ]
        if missing:
            raise TwilioApiError(
                400,
                20001,
                f"{', '.join(missing)} required: an Origination URL needs all of "
                "SipUrl, Priority, Weight, Enabled and FriendlyName",
            )
    sip_url = form.text("SipUrl")
    if sip_url is not None:
        if not _SIP_URL.match(sip_url):
            raise TwilioApiError(
                400,
                20001,
                f"SipUrl {sip_url!r} is not a sip: URI, e.g. sip:abc.sip.livekit.cloud",
            )
        fields["sip_url"] = sip_url
    if form.has("Priority"):
        fields["priority"] = form.integer("Priority", 10, 0, 65535)
    if form.has("Weight"):
        fields["weight"] = form.integer("Weight", 10, 1, 65535)
    enabled = form.boolean("Enabled")
    if enabled is not None:
        fields["enabled"] = enabled
    name = form.text("FriendlyName")
    if name is not None:
        if len(name) > 64:
            raise TwilioApiError(
                400, 20001, f"FriendlyName {name[:20]!r}… is {len(name)} characters; max 64"
            )
        fields["friendly_name"] = name
    return fields


def _origination_of(request: Request, trunk: TrunkRecord) -> OriginationUrlRecord:
    url = trunk.origination_urls.get(request.path_params["sid"])
    if url is None:
        raise not_found(request.url.path)
    return url


async def create_origination(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    fields = _origination_fields(await RequestForm.from_body(request), create=True)
    record = OriginationUrlRecord.model_validate(
        {"sid": new_sid("OU"), "account_sid": acct, "trunk_sid": trunk.sid, **fields}
    )
    with store.lock:
        trunk.origination_urls[record.sid] = record
    await store.save_async()
    return JSONResponse(origination_url_json(record, _origin(request)), status_code=201)


async def list_originations(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    items = [origination_url_json(o, _origin(request)) for o in trunk.origination_urls.values()]
    query = RequestForm.from_query(request)
    return JSONResponse(_meta_page(request, "origination_urls", items, query))


async def fetch_origination(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    return JSONResponse(origination_url_json(_origination_of(request, trunk), _origin(request)))


async def update_origination(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    current = _origination_of(request, trunk)
    fields = _origination_fields(await RequestForm.from_body(request), create=False)
    updated = current.model_copy(update={**fields, "date_updated": utcnow()})
    with store.lock:
        trunk.origination_urls[current.sid] = updated
    await store.save_async()
    return JSONResponse(origination_url_json(updated, _origin(request)))


async def delete_origination(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    current = _origination_of(request, trunk)
    with store.lock:
        del trunk.origination_urls[current.sid]
    await store.save_async()
    return Response(status_code=204)


# --------------------------------------------------------------------------------------
# Phone numbers on a trunk
# --------------------------------------------------------------------------------------


def _on_trunk(request: Request, store: StateStore, acct: str) -> PhoneNumberRecord:
    """The number ``{sid}`` of the path, if it is on trunk ``{trunk_sid}``."""
    number = store.account(acct).numbers.get(request.path_params["sid"])
    if number is None or number.trunk_sid != request.path_params["trunk_sid"]:
        raise not_found(request.url.path)
    return number


async def associate_number(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    form = await RequestForm.from_body(request)
    if not form.text("PhoneNumberSid"):
        raise TwilioApiError(400, 20001, "PhoneNumberSid is required")
    sid = form.sid("PhoneNumberSid", "PN")
    assert sid is not None
    number = store.account(acct).numbers.get(sid)
    if number is None:
        raise TwilioApiError(
            400, 20001, f"PhoneNumberSid {sid} is not a phone number of account {acct}"
        )
    updated = number.model_copy(
        update={"trunk_sid": trunk.sid, "voice_application_sid": None, "date_updated": utcnow()}
    )
    with store.lock:
        store.account(acct).numbers[sid] = updated
    await store.save_async()
    return JSONResponse(trunk_number_json(updated, _origin(request)), status_code=201)


async def list_trunk_numbers(request: Request) -> Response:
    acct, store = _caller(request)
    trunk = _path_trunk(request, store, acct)
    items = [
        trunk_number_json(n, _origin(request))
        for n in store.account(acct).numbers.values()
        if n.trunk_sid == trunk.sid
    ]
    query = RequestForm.from_query(request)
    return JSONResponse(_meta_page(request, "phone_numbers", items, query))


async def fetch_trunk_number(request: Request) -> Response:
    acct, store = _caller(request)
    _path_trunk(request, store, acct)
    return JSONResponse(trunk_number_json(_on_trunk(request, store, acct), _origin(request)))


async def disassociate_number(request: Request) -> Response:
    acct, store = _caller(request)
    _path_trunk(request, store, acct)
    number = _on_trunk(request, store, acct)
    with store.lock:
        store.account(acct).numbers[number.sid] = number.model_copy(
            update={"trunk_sid": None, "date_updated": utcnow()}
        )
    await store.save_async()
    return Response(status_code=204)


def _without(form: RequestForm, name: str) -> RequestForm:
    """``form`` minus one parameter."""

    multi = {k: v for k, v in form._multi.items() if k != name}
    return RequestForm({k: v[-1] for k, v in multi.items()}, multi)


# --------------------------------------------------------------------------------------
# The route table
# --------------------------------------------------------------------------------------

_TRUNK = TRUNKING_PREFIX + "/{sid}"
_ORIGINATION_URLS = TRUNKING_PREFIX + "/{trunk_sid}/OriginationUrls"
_TRUNK_NUMBERS = TRUNKING_PREFIX + "/{trunk_sid}/PhoneNumbers"

TRUNKING_ROUTES: list[BaseRoute] = [
    Route(TRUNKING_PREFIX, create_trunk, methods=["POST"]),
    Route(TRUNKING_PREFIX, list_trunks, methods=["GET"]),
    Route(_TRUNK, fetch_trunk, methods=["GET"]),
    Route(_TRUNK, update_trunk, methods=["POST"]),
    Route(_TRUNK, delete_trunk, methods=["DELETE"]),
    Route(_ORIGINATION_URLS, create_origination, methods=["POST"]),
    Route(_ORIGINATION_URLS, list_originations, methods=["GET"]),
    Route(_ORIGINATION_URLS + "/{sid}", fetch_origination, methods=["GET"]),
    Route(_ORIGINATION_URLS + "/{sid}", update_origination, methods=["POST"]),
    Route(_ORIGINATION_URLS + "/{sid}", delete_origination, methods=["DELETE"]),
    Route(_TRUNK_NUMBERS, associate_number, methods=["POST"]),
    Route(_TRUNK_NUMBERS, list_trunk_numbers, methods=["GET"]),
    Route(_TRUNK_NUMBERS + "/{sid}", fetch_trunk_number, methods=["GET"]),
    Route(_TRUNK_NUMBERS + "/{sid}", disassociate_number, methods=["DELETE"]),
]
"""The trunking subset (``/v1/Trunks/...``): path, handler, method. Served by the simulator's
REST app (:func:`~callplane_standins.twilio_simulator.rest.create_rest_app`)."""
