"""The REST API driven by the real ``twilio.rest.Client``, pointed at the simulator by URL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from callplane_standins.twilio_simulator.simulator import Simulator
from tests.standins.twilio_simulator.conftest import ACCOUNT_SID, AUTH_TOKEN, sdk

BUNDLE = "BU" + "a" * 32


def page_error(exc: TwilioException) -> tuple[int, dict[str, Any]]:
    """A list call's error: the SDK raises a plain TwilioException carrying the response."""
    response = exc.args[1]
    return response.status_code, json.loads(response.text)


ADDRESS = "AD" + "b" * 32


async def test_number_lifecycle_with_the_sdk(client: Any) -> None:
    found = await sdk(client.available_phone_numbers("US").local.list, area_code="415", limit=5)
    assert len(found) == 5
    assert all(n.phone_number.startswith("+1415") for n in found)
    assert found[0].locality == "San Francisco" and found[0].region == "CA"
    assert found[0].address_requirements == "none"
    wanted = found[0].phone_number

    bought = await sdk(
        client.incoming_phone_numbers.create,
        phone_number=wanted,
        voice_url="https://edge.example/twilio/voice",
        friendly_name="support line",
    )
    assert bought.sid.startswith("PN") and len(bought.sid) == 34
    assert bought.phone_number == wanted
    assert bought.voice_url == "https://edge.example/twilio/voice"
    assert bought.voice_method == "POST"
    assert bought.friendly_name == "support line"
    assert bought.account_sid == ACCOUNT_SID
    assert bought.date_created is not None  # parsed from RFC 2822 by the SDK

    # A bought number is no longer offered.
    again = await sdk(client.available_phone_numbers("US").local.list, area_code="415", limit=5)
    assert wanted not in {n.phone_number for n in again}

    updated = await sdk(
        client.incoming_phone_numbers(bought.sid).update,
        voice_url="https://edge2.example/twilio/voice",
        voice_method="GET",
        status_callback="https://edge2.example/twilio/status",
    )
    assert updated.voice_url == "https://edge2.example/twilio/voice"
    assert updated.voice_method == "GET"

    fetched = await sdk(client.incoming_phone_numbers(bought.sid).fetch)
    assert fetched.voice_url == "https://edge2.example/twilio/voice"
    assert fetched.status_callback == "https://edge2.example/twilio/status"

    listed = await sdk(client.incoming_phone_numbers.list, phone_number=wanted, limit=5)
    assert [n.sid for n in listed] == [bought.sid]

    assert await sdk(client.incoming_phone_numbers(bought.sid).delete) is True
    assert await sdk(client.incoming_phone_numbers.list, phone_number=wanted) == []
    with pytest.raises(TwilioRestException) as err:
        await sdk(client.incoming_phone_numbers(bought.sid).fetch)
    assert err.value.status == 404 and err.value.code == 20404


async def test_listing_follows_pages(client: Any) -> None:
    for n in ("+14155550110", "+14155550111", "+14155550112"):
        await sdk(client.incoming_phone_numbers.create, phone_number=n)
    # page_size 2 forces the SDK to follow next_page_uri.
    numbers = await sdk(client.incoming_phone_numbers.list, page_size=2)
    assert [n.phone_number for n in numbers] == ["+14155550110", "+14155550111", "+14155550112"]


async def test_pk_mobile_requires_a_bundle(client: Any) -> None:
    offered = await sdk(client.available_phone_numbers("PK").mobile.list, limit=2)
    assert offered and offered[0].phone_number.startswith("+92")
    number = offered[0].phone_number
    with pytest.raises(TwilioRestException) as err:
        await sdk(client.incoming_phone_numbers.create, phone_number=number)
    assert err.value.status == 400 and err.value.code == 21649
    assert number in err.value.msg and "Bundle" in err.value.msg

    bought = await sdk(client.incoming_phone_numbers.create, phone_number=number, bundle_sid=BUNDLE)
    assert bought.bundle_sid == BUNDLE and bought.phone_number == number


async def test_pk_toll_free_and_local_have_no_inventory(client: Any) -> None:
    country = await sdk(client.available_phone_numbers("PK").fetch)
    assert set(country.subresource_uris) == {"mobile"}
    for kind in ("toll_free", "local"):
        with pytest.raises(TwilioException) as err:
            await sdk(getattr(client.available_phone_numbers("PK"), kind).list)
        # The SDK's list raises a plain TwilioException carrying the 404 response.
        response = err.value.args[1]
        assert response.status_code == 404 and json.loads(response.text)["code"] == 20404
    with pytest.raises(TwilioRestException) as rest_err:
        await sdk(client.incoming_phone_numbers.create, phone_number="+92800123456")
    assert rest_err.value.code == 21422


async def test_address_required_country(client: Any) -> None:
    offered = await sdk(client.available_phone_numbers("DE").local.list, limit=1)
    assert offered[0].address_requirements == "local"
    with pytest.raises(TwilioRestException) as err:
        await sdk(client.incoming_phone_numbers.create, phone_number=offered[0].phone_number)
    assert err.value.code == 21631
    bought = await sdk(
        client.incoming_phone_numbers.create,
        phone_number=offered[0].phone_number,
        address_sid=ADDRESS,
    )
    assert bought.address_sid == ADDRESS


async def test_search_filters_and_toll_free(client: Any) -> None:
    found = await sdk(client.available_phone_numbers("US").local.list, contains="555015*", limit=20)
    assert {n.phone_number[-4:] for n in found} <= {f"015{i}" for i in range(10)}
    assert found
    toll = await sdk(client.available_phone_numbers("US").toll_free.list, limit=3)
    assert all(n.phone_number.startswith(("+1800", "+1888")) for n in toll)
    with pytest.raises(TwilioRestException) as err:
        await sdk(client.incoming_phone_numbers.local.create, phone_number=toll[0].phone_number)
    assert err.value.code == 21458
    gb = await sdk(client.available_phone_numbers("GB").mobile.list, limit=1)
    assert gb[0].phone_number.startswith("+447700900")
    by_area = await sdk(client.incoming_phone_numbers.create, area_code="212")
    assert by_area.phone_number.startswith("+1212")


async def test_bad_input_gets_twilio_errors_naming_field_and_value(client: Any) -> None:
    cases: list[tuple[dict[str, str], int, str]] = [
        ({"phone_number": "555-0100"}, 21421, "'555-0100'"),
        ({"phone_number": "+14155550120", "voice_url": "ftp://x"}, 21502, "'ftp://x'"),
        ({"phone_number": "+14155550120", "voice_method": "PUT"}, 20001, "'PUT'"),
        ({"phone_number": "+14155550120", "bundle_sid": "bundle-1"}, 21649, "'bundle-1'"),
    ]
    for kwargs, code, needle in cases:
        with pytest.raises(TwilioRestException) as err:
            await sdk(client.incoming_phone_numbers.create, **kwargs)
        assert err.value.code == code, kwargs
        assert needle in err.value.msg, err.value.msg
    with pytest.raises(TwilioException) as list_err:
        await sdk(client.available_phone_numbers("US").local.list, contains="1")
    status, body = page_error(list_err.value)
    assert status == 400 and "Contains '1'" in body["message"]


async def test_wrong_credentials_get_401(sim: Simulator) -> None:
    bad = Client(ACCOUNT_SID, "not-the-token")
    bad.api.base_url = sim.base_url
    with pytest.raises(TwilioRestException) as err:
        await sdk(bad.incoming_phone_numbers.create, phone_number="+14155550100")
    assert err.value.status == 401 and err.value.code == 20003
    with pytest.raises(TwilioException) as list_err:
        await sdk(bad.incoming_phone_numbers.list)
    assert page_error(list_err.value)[0] == 401

    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{sim.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json")
    assert resp.status_code == 401
    assert resp.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert resp.headers["www-authenticate"].startswith("Basic")

    other = "AC" + "f" * 32
    wrong_account = Client(ACCOUNT_SID, AUTH_TOKEN, account_sid=other)
    wrong_account.api.base_url = sim.base_url
    with pytest.raises(TwilioRestException) as err:
        await sdk(wrong_account.calls("CA" + "0" * 32).fetch)
    assert err.value.status == 401


async def test_state_survives_a_restart(sim: Simulator, client: Any, state_path: Path) -> None:
    bought = await sdk(
        client.incoming_phone_numbers.create,
        phone_number="+12125550150",
        voice_url="https://edge.example/voice",
    )
    await sim.stop()
    assert "+12125550150" in await asyncio.to_thread(state_path.read_text)

    restarted = Simulator(state_path, ACCOUNT_SID, AUTH_TOKEN)
    await restarted.start()
    try:
        again = restarted.rest_client()
        fetched = await sdk(again.incoming_phone_numbers(bought.sid).fetch)
        assert fetched.phone_number == "+12125550150"
        assert fetched.voice_url == "https://edge.example/voice"
        with pytest.raises(TwilioRestException) as err:
            await sdk(again.incoming_phone_numbers.create, phone_number="+12125550150")
        assert err.value.code == 21422
    finally:
        await restarted.stop()


def test_a_corrupt_state_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"state\.json"):
        Simulator(path, ACCOUNT_SID, AUTH_TOKEN)
    assert path.read_text() == "{not json"


async def test_unknown_routes_and_methods_answer_in_twilio_shape(sim: Simulator) -> None:
    async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN)) as http:
        base = f"{sim.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}"
        missing = await http.get(f"{base}/Queues.json")
        assert missing.status_code == 404 and missing.json()["code"] == 20404
        country = await http.get(f"{base}/AvailablePhoneNumbers/ZZ/Local.json")
        assert country.status_code == 404 and country.json()["code"] == 20404
        call = await http.post(f"{base}/Calls.json", data={"To": "+14155550100"})
        assert call.status_code == 400 and call.json()["code"] == 21213
