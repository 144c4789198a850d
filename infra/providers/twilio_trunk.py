"""TwilioSipTrunk: an Elastic SIP Trunk whose origination URL is LiveKit's SIP endpoint.

Numbers join the trunk through their own ``trunk_sid`` input (TwilioPhoneNumber), which is the
same association as ``POST /Trunks/{TK}/PhoneNumbers`` (reference twilio.md §8). A rerun after an
interrupted ``up`` adopts a trunk with this resource's friendly name.

Exercised against the Twilio simulator's trunking subset (``/v1/Trunks``, origination URLs,
trunk phone numbers) through the SDK's ``trunking.v1`` client: tests/infra/providers/
test_twilio_trunk.py and the CLI scenario. Not against Twilio itself (no account here).
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

from infra.providers.common import diff_props
from infra.providers.twilio_api import explain, is_not_found, twilio_client

__all__ = ["TwilioSipTrunk", "TwilioSipTrunkProvider"]

REPLACING = ("account_sid",)
UPDATABLE = ("friendly_name", "origination_sip_url", "auth_token", "api_base_url")
_ENTRY = "callplane:livekit.sipUri"


def origination_args(props: dict[str, Any]) -> dict[str, Any]:
    """The Origination URL request: every field is required by Twilio (reference §8)."""
    return {
        "sip_url": props["origination_sip_url"],
        "priority": 10,
        "weight": 10,
        "enabled": True,
        "friendly_name": f"{props['friendly_name']} to LiveKit",
    }


class TwilioSipTrunkProvider(ResourceProvider):
    serialize_as_secret_always = False

    def _client(self, props: dict[str, Any]) -> Any:
        return twilio_client(props["account_sid"], props["auth_token"], props.get("api_base_url"))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_props(olds, news, updatable=UPDATABLE, replacing=REPLACING)

    def create(self, props: dict[str, Any]) -> CreateResult:
        client = self._client(props)
        trunks = client.trunking.v1.trunks
        try:
            trunk = next(
                (t for t in trunks.list(limit=200) if t.friendly_name == props["friendly_name"]),
                None,
            ) or trunks.create(friendly_name=props["friendly_name"])
            urls = client.trunking.v1.trunks(trunk.sid).origination_urls
            existing = [u for u in urls.list(limit=20) if u.sip_url == props["origination_sip_url"]]
            url = existing[0] if existing else urls.create(**origination_args(props))
        except Exception as exc:
            raise explain(exc, _ENTRY, "create the SIP trunk") from None
        return CreateResult(
            id_=trunk.sid, outs={**props, "trunk_sid": trunk.sid, "origination_url_sid": url.sid}
        )

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        client = self._client(props)
        try:
            trunk = client.trunking.v1.trunks(id_).fetch()
        except Exception as exc:
            if is_not_found(exc):
                return ReadResult(id_="", outs={})
            raise explain(exc, _ENTRY, f"read trunk {id_}") from None
        outs = {**props, "friendly_name": trunk.friendly_name}
        url_sid = props.get("origination_url_sid")
        if url_sid:
            try:
                url = client.trunking.v1.trunks(id_).origination_urls(url_sid).fetch()
                outs["origination_sip_url"] = url.sip_url
            except Exception as exc:
                if not is_not_found(exc):
                    raise explain(exc, _ENTRY, f"read trunk {id_}'s origination URL") from None
                outs["origination_sip_url"] = None  # deleted behind Pulumi's back: up recreates
        return ReadResult(id_=id_, outs=outs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        client = self._client(news)
        try:
            if olds.get("friendly_name") != news.get("friendly_name"):
                client.trunking.v1.trunks(id_).update(friendly_name=news["friendly_name"])
            url_sid = olds.get("origination_url_sid")
            if olds.get("origination_sip_url") != news.get("origination_sip_url"):
                urls = client.trunking.v1.trunks(id_).origination_urls
                if url_sid and olds.get("origination_sip_url") is not None:
                    urls(url_sid).update(sip_url=news["origination_sip_url"])
                else:  # none yet, or deleted behind Pulumi's back (refresh saw it gone)
                    url_sid = urls.create(**origination_args(news)).sid
        except Exception as exc:
            raise explain(exc, _ENTRY, f"update trunk {id_}") from None
        return UpdateResult(outs={**news, "trunk_sid": id_, "origination_url_sid": url_sid})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        try:
            self._client(props).trunking.v1.trunks(id_).delete()
        except Exception as exc:
            if not is_not_found(exc):
                raise explain(exc, _ENTRY, f"delete trunk {id_}") from None


class TwilioSipTrunk(Resource, module="twilio", name="SipTrunk"):
    trunk_sid: pulumi.Output[str]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(
            TwilioSipTrunkProvider(),
            name,
            {"trunk_sid": None, "origination_url_sid": None, **props},
            opts,
        )
