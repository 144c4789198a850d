"""TwilioPhoneNumber: a phone number bought (or imported) with the ``twilio`` SDK.

* create: import (fetch by SID or E.164, no purchase) or buy: first adopt a number of the
  account already carrying this resource's friendly name (an ``up`` killed after the purchase
  is rerun without buying a duplicate), else search with the entry's filters and buy with its
  bundle and address; the webhooks are set in the same request, so nothing is ever half made.
* update: webhooks, friendly name, trunk, bundle and address in place, same number.
* read (``pulumi refresh``): the number as Twilio has it now, so drift shows; a number released
  behind Pulumi's back leaves the state.
* delete: releases the number only when the stack set ``protect: false`` for it; otherwise the
  number stays on the account and only leaves the state.
* diff: only the declared inputs; a change of provider code is not an update. Search criteria
  (country, type, area code, ...) replace; everything else updates in place.

Twilio's refusals (21631 address, 21649 bundle, no inventory) become errors naming the config
entry and the fix. The auth token is an input marked secret by the program, so the engine keeps
it (and the output of the same name) encrypted in the state.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import (
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from infra.providers.common import ProvisioningError, diff_props
from infra.providers.twilio_api import explain, is_not_found, twilio_client

__all__ = ["REPLACING", "UPDATABLE", "TwilioPhoneNumber", "TwilioPhoneNumberProvider"]

#: Inputs whose change means another number (a new purchase; the old one kept if protected).
REPLACING = (
    "account_sid",
    "mode",
    "import_ref",
    "country",
    "number_type",
    "area_code",
    "contains",
    "locality",
)
#: Inputs Twilio changes on the same number.
UPDATABLE = (
    "friendly_name",
    "voice_url",
    "voice_method",
    "status_callback",
    "status_callback_method",
    "trunk_sid",
    "bundle_sid",
    "address_sid",
    "protected",
    "auth_token",
    "api_base_url",
)
_HOOKS = (
    "friendly_name",
    "voice_url",
    "voice_method",
    "status_callback",
    "status_callback_method",
)
_SEARCH_TRIES = 5


def _live(number: Any) -> dict[str, Any]:
    """The fields of an IncomingPhoneNumber instance that the resource tracks."""
    return {
        "sid": number.sid,
        "phone_number": number.phone_number,
        "friendly_name": number.friendly_name,
        "voice_url": number.voice_url or None,
        "voice_method": number.voice_method or None,
        "status_callback": number.status_callback or None,
        "status_callback_method": number.status_callback_method or None,
        "trunk_sid": number.trunk_sid or None,
        "bundle_sid": number.bundle_sid or None,
        "address_sid": number.address_sid or None,
    }


def _hooks(props: dict[str, Any]) -> dict[str, Any]:
    out = {k: props[k] for k in _HOOKS if props.get(k) is not None}
    if props.get("trunk_sid"):
        out["trunk_sid"] = props["trunk_sid"]
    return out


class TwilioPhoneNumberProvider(ResourceProvider):
    """CRUD for one IncomingPhoneNumber (see the module docstring)."""

    serialize_as_secret_always = False

    def _client(self, props: dict[str, Any]) -> Any:
        return twilio_client(props["account_sid"], props["auth_token"], props.get("api_base_url"))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_props(olds, news, updatable=UPDATABLE, replacing=REPLACING)

    def create(self, props: dict[str, Any]) -> CreateResult:
        client = self._client(props)
        entry = props.get("entry", "number")
        if props.get("mode") == "import":
            number = self._find_import(client, props)
            changes = _hooks(props)
            if changes:
                try:
                    number = client.incoming_phone_numbers(number.sid).update(**changes)
                except Exception as exc:
                    raise explain(exc, entry, "update the imported number") from None
        else:
            number = self._adopt(client, props) or self._buy(client, props)
        outs = {**props, **_live(number)}
        return CreateResult(id_=number.sid, outs=outs)

    def _find_import(self, client: Any, props: dict[str, Any]) -> Any:
        ref: str = props["import_ref"]
        entry = props.get("entry", "number")
        try:
            if ref.startswith("PN"):
                return client.incoming_phone_numbers(ref).fetch()
            found = client.incoming_phone_numbers.list(phone_number=ref, limit=2)
        except Exception as exc:
            if is_not_found(exc):
                found = []
            else:
                raise explain(exc, entry, f"look up {ref}") from None
        if not found:
            raise ProvisioningError(
                f"{entry}: import {ref} is not a number of account {props['account_sid']}. Fix: "
                "check the SID or number in Console > Phone Numbers > Active numbers (and that "
                "callplane:twilio.accountSid is that account), or drop import: to buy one"
            )
        return found[0]

    def _adopt(self, client: Any, props: dict[str, Any]) -> Any | None:
        """A number already bought for this resource (same friendly name): a rerun after an
        interrupted ``up`` takes it over instead of buying another."""
        name = props.get("friendly_name")
        if not name:
            return None
        try:
            owned = [
                n
                for n in client.incoming_phone_numbers.list(friendly_name=name, limit=20)
                if n.friendly_name == name
            ]
        except Exception as exc:
            raise explain(exc, props.get("entry", "number"), "list the account's numbers") from None
        if len(owned) > 1:
            raise ProvisioningError(
                f"{props.get('entry')}: {len(owned)} numbers on the account are named {name!r} "
                f"({', '.join(n.phone_number for n in owned)}), so it is unclear which one this "
                "stack owns. Fix: rename or release the extra ones in the Twilio Console, then "
                "run pulumi up again"
            )
        if not owned:
            return None
        number = owned[0]
        return client.incoming_phone_numbers(number.sid).update(**_hooks(props))

    def _buy(self, client: Any, props: dict[str, Any]) -> Any:
        entry = props.get("entry", "number")
        country, number_type = props["country"], props["number_type"]
        kind = number_type.replace("_", "-")
        search = client.available_phone_numbers(country)
        listing = {"local": search.local, "mobile": search.mobile, "toll_free": search.toll_free}
        filters: dict[str, Any] = {"voice_enabled": True, "limit": _SEARCH_TRIES}
        for key in ("area_code", "contains"):
            if props.get(key):
                filters[key] = props[key]
        if props.get("locality"):
            filters["in_locality"] = props["locality"]
        try:
            candidates = listing[number_type].list(**filters)
        except Exception as exc:
            if is_not_found(exc):
                raise ProvisioningError(
                    f"{entry}: Twilio has no {country} {kind} numbers in stock for this account "
                    "(no inventory). Fix: choose another type or country for this entry, or ask "
                    "Twilio support about stock; the rules table can record it with "
                    f"callplane:countries: {{{country}: {{{number_type}: {{sold: false}}}}}}"
                ) from None
            raise explain(exc, entry, f"search {country} {kind} numbers") from None
        if not candidates:
            narrowed = ", ".join(
                f"{k}={filters[k]!r}" for k in filters if k not in ("limit", "voice_enabled")
            )
            raise ProvisioningError(
                f"{entry}: no {country} {kind} number matches "
                f"{narrowed or 'the search'} right now. Fix: widen the search (another areaCode, "
                "a shorter contains, no locality) and run pulumi up again"
            )
        last: Exception | None = None
        for candidate in candidates:
            try:
                return client.incoming_phone_numbers.create(
                    phone_number=candidate.phone_number,
                    bundle_sid=props.get("bundle_sid") or None,
                    address_sid=props.get("address_sid") or None,
                    **_hooks(props),
                )
            except Exception as exc:
                if getattr(exc, "code", None) in (21422, 21452):  # taken meanwhile: next one
                    last = exc
                    continue
                raise explain(exc, entry, f"buy {candidate.phone_number}") from None
        raise ProvisioningError(
            f"{entry}: every {country} {kind} number found was bought by someone else meanwhile "
            f"({last}). Fix: run pulumi up again"
        )

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        client = self._client(props)
        try:
            number = client.incoming_phone_numbers(id_).fetch()
        except Exception as exc:
            if is_not_found(exc):
                return ReadResult(id_="", outs={})
            raise explain(exc, props.get("entry", "number"), f"read {id_}") from None
        return ReadResult(id_=id_, outs={**props, **_live(number)})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        client = self._client(news)
        changes: dict[str, Any] = {}
        for key in (*_HOOKS, "trunk_sid", "bundle_sid", "address_sid"):
            if olds.get(key) != news.get(key):
                changes[key] = news.get(key) or ""
        try:
            target = client.incoming_phone_numbers(id_)
            number = target.update(**changes) if changes else target.fetch()
        except Exception as exc:
            raise explain(exc, news.get("entry", "number"), f"update {id_}") from None
        return UpdateResult(outs={**news, **_live(number)})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if props.get("protected", True):
            return  # protected: the number stays on the account; only the state forgets it
        client = self._client(props)
        try:
            client.incoming_phone_numbers(id_).delete()
        except Exception as exc:
            if is_not_found(exc):
                return
            raise explain(exc, props.get("entry", "number"), f"release {id_}") from None


class TwilioPhoneNumber(Resource, module="twilio", name="PhoneNumber"):
    """A number the stack owns; ``sid`` and ``phone_number`` are known after create."""

    sid: pulumi.Output[str]
    phone_number: pulumi.Output[str]
    voice_url: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        props: dict[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            TwilioPhoneNumberProvider(),
            name,
            {"sid": None, "phone_number": None, **props},
            opts,
        )
