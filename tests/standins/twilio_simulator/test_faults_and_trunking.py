"""The simulator's fault injection routes and its Elastic SIP Trunking subset."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from callplane_standins.twilio_simulator.faults import Fault, FaultError
from callplane_standins.twilio_simulator.rest import create_rest_app
from callplane_standins.twilio_simulator.simulator import Simulator
from tests.standins.twilio_simulator.conftest import ACCOUNT_SID, AUTH_TOKEN, sdk

AUTH = (ACCOUNT_SID, AUTH_TOKEN)
NUMBERS = f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json"


async def test_an_armed_error_answers_instead_of_the_request_then_disarms(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url, auth=AUTH) as http:
        armed = await http.post(
            "/_simulator/faults",
            json={
                "method": "POST",
                "path": "*/IncomingPhoneNumbers.json",
                "params": {"PhoneNumber": "+1415*"},
                "status": 400,
                "code": 21649,
                "message": "Bundle required",
                "times": 1,
            },
        )
        assert armed.status_code == 201 and armed.json()["hits"] == 0
        other = await http.post(NUMBERS, data={"PhoneNumber": "+12125550100"})
        assert other.status_code == 201  # params do not match: untouched
        refused = await http.post(NUMBERS, data={"PhoneNumber": "+14155550100"})
        assert refused.status_code == 400
        assert refused.json()["code"] == 21649 and refused.json()["message"] == "Bundle required"
        assert "+14155550100" not in {n.phone_number for n in sim.store.all_numbers()}
        assert (await http.get("/_simulator/faults")).json() == {"faults": []}  # times: 1
        again = await http.post(NUMBERS, data={"PhoneNumber": "+14155550100"})
        assert again.status_code == 201


async def test_a_delay_holds_the_answer_after_the_request_took_effect(sim: Simulator) -> None:
    client = sim.rest_client()
    sim.faults.add(Fault(method="POST", path="*/IncomingPhoneNumbers.json", delay_s=0.6))
    started = time.monotonic()
    bought = await sdk(client.incoming_phone_numbers.create, phone_number="+14155550101")
    assert time.monotonic() - started >= 0.6
    assert bought.phone_number == "+14155550101"
    (fault,) = sim.faults.armed()
    assert fault.hits == 1  # no times: stays armed until cleared
    async with httpx.AsyncClient(base_url=sim.base_url, auth=AUTH) as http:
        assert (await http.delete(f"/_simulator/faults/{fault.id}")).status_code == 204
        assert (await http.delete(f"/_simulator/faults/{fault.id}")).status_code == 404
        assert (await http.delete("/_simulator/faults")).status_code == 204


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"path": "x", "status": 400}, "path='x' is invalid"),
        ({"path": "/a"}, "the fault does nothing"),
        ({"path": "/a", "status": 200}, "status=200 is invalid"),
        ({"path": "/a", "code": 21649}, "code and message need status"),
        ({"path": "/a", "delay_s": 601}, "delay_s=601 is invalid"),
        ({"path": "/a", "status": 400, "times": 0}, "times=0 is invalid"),
        ({"path": "/a", "status": 400, "color": "red"}, "unknown fields ['color']"),
    ],
)
async def test_a_bad_fault_is_refused_naming_the_field(
    sim: Simulator, body: dict[str, Any], message: str
) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url, auth=AUTH) as http:
        answer = await http.post("/_simulator/faults", json=body)
    assert answer.status_code == 400 and message in answer.json()["message"]
    with pytest.raises(FaultError):
        Fault(path="nope", status=400)


async def test_fault_routes_need_credentials_and_a_loopback_peer(sim: Simulator) -> None:
    body = {"path": "/a", "status": 500}
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        assert (await http.post("/_simulator/faults", json=body)).status_code == 401
    remote = httpx.ASGITransport(app=create_rest_app(sim), client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=remote, base_url="http://sim", auth=AUTH) as http:
        answer = await http.post("/_simulator/faults", json=body)
    assert answer.status_code == 403 and "loopback" in answer.json()["message"]
    assert sim.faults.armed() == []


async def test_trunks_origination_urls_and_numbers_through_the_sdk(sim: Simulator) -> None:
    client = sim.rest_client()
    v1 = client.trunking.v1

    def scenario() -> dict[str, Any]:
        trunk = v1.trunks.create(friendly_name="to livekit", domain_name="cp-test.pstn.twilio.com")
        url = v1.trunks(trunk.sid).origination_urls.create(
            sip_url="sip:abc.sip.livekit.cloud",
            priority=10,
            weight=20,
            enabled=True,
            friendly_name="livekit",
        )
        number = client.incoming_phone_numbers.create(phone_number="+14155550102")
        joined = v1.trunks(trunk.sid).phone_numbers.create(phone_number_sid=number.sid)
        for i in range(55):  # more than one page of trunks
            v1.trunks.create(friendly_name=f"extra {i}")
        return {
            "trunk": trunk,
            "url": url,
            "joined": joined,
            "number_trunk": client.incoming_phone_numbers(number.sid).fetch().trunk_sid,
            "listed": [u.sip_url for u in v1.trunks(trunk.sid).origination_urls.list()],
            "trunk_numbers": [n.phone_number for n in v1.trunks(trunk.sid).phone_numbers.list()],
            "all": len(v1.trunks.list()),
        }

    got = await sdk(scenario)
    trunk = got["trunk"]
    assert trunk.sid.startswith("TK") and trunk.domain_name == "cp-test.pstn.twilio.com"
    assert trunk.transfer_mode == "disable-all" and trunk.date_created is not None
    assert (got["url"].sip_url, got["url"].weight) == ("sip:abc.sip.livekit.cloud", 20)
    assert got["joined"].trunk_sid == trunk.sid == got["number_trunk"]
    assert got["listed"] == ["sip:abc.sip.livekit.cloud"]
    assert got["trunk_numbers"] == ["+14155550102"]
    assert got["all"] == 56


async def test_trunking_refusals(sim: Simulator) -> None:
    client = sim.rest_client()
    v1 = client.trunking.v1

    def refused(fn: Any, **kw: Any) -> str:
        try:
            fn(**kw)
        except Exception as exc:
            return str(getattr(exc, "msg", exc))
        raise AssertionError("accepted")

    def scenario() -> list[str]:
        trunk = v1.trunks.create(friendly_name="t")
        urls = v1.trunks(trunk.sid).origination_urls
        return [
            refused(v1.trunks.create, domain_name="example.com"),
            refused(
                urls.create,
                sip_url="http://x",
                priority=1,
                weight=1,
                enabled=True,
                friendly_name="f",
            ),
            refused(
                urls.create, sip_url="sip:x", priority=1, weight=0, enabled=True, friendly_name="f"
            ),
            refused(
                client.incoming_phone_numbers.create,
                phone_number="+14155550103",
                trunk_sid="TK" + "0" * 32,
            ),
            refused(v1.trunks(trunk.sid).phone_numbers.create, phone_number_sid="PN" + "0" * 32),
            refused(v1.trunks("TK" + "1" * 32).fetch),
        ]

    messages = await sdk(scenario)
    assert "must be <name>.pstn.twilio.com" in messages[0]
    assert "is not a sip: URI" in messages[1]
    assert "Weight '0' must be between 1 and 65535" in messages[2]
    assert "is not an Elastic SIP Trunk of account" in messages[3]
    assert "is not a phone number of account" in messages[4]
    assert "was not found" in messages[5]


async def test_trunks_survive_a_restart(sim: Simulator) -> None:
    trunk = await sdk(sim.rest_client().trunking.v1.trunks.create, friendly_name="kept")
    await sim.stop()
    again = Simulator(sim.state_path, ACCOUNT_SID, AUTH_TOKEN)
    await again.start()
    try:
        fetched = await sdk(again.rest_client().trunking.v1.trunks(trunk.sid).fetch)
        assert fetched.friendly_name == "kept"
    finally:
        await again.stop()
