"""TwilioSipTrunkProvider against the Twilio simulator's Elastic SIP Trunking subset, through
the real twilio SDK's ``trunking.v1`` client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callplane_standins.twilio_simulator.simulator import Simulator
from infra.providers.common import ProvisioningError
from infra.providers.twilio_trunk import TwilioSipTrunkProvider
from tests.infra.conftest import ACCOUNT_SID, AUTH_TOKEN

SIP = "sip:abc123.sip.livekit.cloud"


def props(sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "api_base_url": sim.base_url,
        "friendly_name": "callplane test",
        "origination_sip_url": SIP,
        **extra,
    }


async def call(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def trunks(sim: Simulator) -> dict[str, Any]:
    return dict(sim.store.account(ACCOUNT_SID).trunks)


async def test_create_makes_the_trunk_and_its_origination_url(sim: Simulator) -> None:
    p = TwilioSipTrunkProvider()
    result = await call(p.create, props(sim))
    (trunk,) = trunks(sim).values()
    assert result.id == trunk.sid == result.outs["trunk_sid"] and trunk.sid.startswith("TK")
    assert trunk.friendly_name == "callplane test"
    (url,) = trunk.origination_urls.values()
    assert result.outs["origination_url_sid"] == url.sid
    assert (url.sip_url, url.priority, url.weight, url.enabled) == (SIP, 10, 10, True)
    assert url.friendly_name == "callplane test to LiveKit"


async def test_rerun_after_an_interrupted_up_adopts_the_trunk(sim: Simulator) -> None:
    p = TwilioSipTrunkProvider()
    first = await call(p.create, props(sim))
    second = await call(p.create, props(sim))
    assert second.id == first.id and len(trunks(sim)) == 1
    assert second.outs["origination_url_sid"] == first.outs["origination_url_sid"]
    assert len(trunks(sim)[first.id].origination_urls) == 1


async def test_a_number_joins_the_trunk_through_its_trunk_sid(sim: Simulator) -> None:
    created = await call(TwilioSipTrunkProvider().create, props(sim))
    client = sim.rest_client()

    def associate() -> list[str]:
        number = client.incoming_phone_numbers.create(phone_number="+14155550150")
        client.incoming_phone_numbers(number.sid).update(trunk_sid=created.id)
        return [n.phone_number for n in client.trunking.v1.trunks(created.id).phone_numbers.list()]

    assert await asyncio.to_thread(associate) == ["+14155550150"]


async def test_update_moves_the_origination_url_and_read_reports_drift(sim: Simulator) -> None:
    p = TwilioSipTrunkProvider()
    created = await call(p.create, props(sim))
    news = props(sim, origination_sip_url="sip:other.sip.livekit.cloud", friendly_name="renamed")
    assert p.diff(created.id, created.outs, news).replaces == []
    updated = await call(p.update, created.id, created.outs, news)
    trunk = trunks(sim)[created.id]
    assert trunk.friendly_name == "renamed"
    assert [u.sip_url for u in trunk.origination_urls.values()] == ["sip:other.sip.livekit.cloud"]
    # Drift: the origination URL deleted behind Pulumi's back shows in read; update recreates it.
    client = sim.rest_client()
    url_sid = updated.outs["origination_url_sid"]
    await asyncio.to_thread(
        lambda: client.trunking.v1.trunks(created.id).origination_urls(url_sid).delete()
    )
    read = await call(p.read, created.id, updated.outs)
    assert read.outs["origination_sip_url"] is None
    assert p.diff(created.id, read.outs, news).changes
    fixed = await call(p.update, created.id, read.outs, news)
    assert fixed.outs["origination_url_sid"] != url_sid
    assert [u.sip_url for u in trunks(sim)[created.id].origination_urls.values()] == [
        "sip:other.sip.livekit.cloud"
    ]


async def test_delete_removes_the_trunk_and_frees_its_numbers(sim: Simulator) -> None:
    p = TwilioSipTrunkProvider()
    created = await call(p.create, props(sim))
    client = sim.rest_client()
    number = await asyncio.to_thread(
        lambda: client.incoming_phone_numbers.create(
            phone_number="+14155550151", trunk_sid=created.id
        )
    )
    await call(p.delete, created.id, created.outs)
    assert trunks(sim) == {}
    assert sim.store.account(ACCOUNT_SID).numbers[number.sid].trunk_sid is None
    await call(p.delete, created.id, created.outs)  # already gone: fine
    assert (await call(p.read, created.id, created.outs)).id == ""


async def test_bad_sip_uri_and_bad_credentials_name_the_config_key(sim: Simulator) -> None:
    p = TwilioSipTrunkProvider()
    with pytest.raises(ProvisioningError, match=r"^callplane:livekit\.sipUri: .*SipUrl"):
        await call(p.create, props(sim, origination_sip_url="http://not-sip"))
    with pytest.raises(ProvisioningError, match="callplane:twilioAuthToken"):
        await call(p.create, props(sim, auth_token="wrong"))
