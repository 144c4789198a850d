"""TwilioPhoneNumberProvider against the real Twilio simulator, through the real twilio SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callplane_standins.twilio_simulator.faults import Fault
from callplane_standins.twilio_simulator.simulator import Simulator
from infra.providers.common import ProvisioningError
from infra.providers.twilio_number import TwilioPhoneNumberProvider
from tests.infra.conftest import ACCOUNT_SID, AUTH_TOKEN, BUNDLE

ENTRY = "callplane:numbers[0] (PK mobile for profile support)"


def props(sim: Simulator, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "entry": ENTRY,
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "api_base_url": sim.base_url,
        "mode": "buy",
        "country": "PK",
        "number_type": "mobile",
        "bundle_sid": BUNDLE,
        "friendly_name": "callplane test pk-mobile-support",
        "voice_url": "http://127.0.0.1:8787/twilio/voice",
        "voice_method": "POST",
        "status_callback": "http://127.0.0.1:8787/twilio/status",
        "status_callback_method": "POST",
        "protected": True,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


async def call(fn: Any, *args: Any) -> Any:
    """Provider methods are blocking; the simulator serves on this event loop."""
    return await asyncio.to_thread(fn, *args)


def owned(sim: Simulator) -> dict[str, Any]:
    return {n.phone_number: n for n in sim.store.account(ACCOUNT_SID).numbers.values()}


async def test_buy_pk_mobile_with_bundle_sets_webhooks_in_the_purchase(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    result = await call(p.create, props(sim))
    number = owned(sim)[result.outs["phone_number"]]
    assert result.id == number.sid and number.sid.startswith("PN")
    assert number.phone_number.startswith("+92")
    assert number.bundle_sid == BUNDLE
    assert number.voice_url == "http://127.0.0.1:8787/twilio/voice"
    assert number.status_callback == "http://127.0.0.1:8787/twilio/status"
    assert number.friendly_name == "callplane test pk-mobile-support"
    assert result.outs["voice_url"] == number.voice_url


async def test_rerun_after_an_interrupted_up_adopts_instead_of_buying_again(
    sim: Simulator,
) -> None:
    p = TwilioPhoneNumberProvider()
    first = await call(p.create, props(sim))
    # Pulumi lost the result (killed mid-up): the same create runs again.
    second = await call(p.create, props(sim, voice_url="http://127.0.0.1:9999/twilio/voice"))
    assert second.id == first.id
    assert len(owned(sim)) == 1
    assert owned(sim)[first.outs["phone_number"]].voice_url.startswith("http://127.0.0.1:9999")


async def test_missing_bundle_gives_21649_naming_the_entry_and_fix(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError) as err:
        await call(p.create, props(sim, bundle_sid=None))
    text = str(err.value)
    assert text.startswith(ENTRY)
    assert "21649" in text and "add bundle: BU" in text
    assert owned(sim) == {}  # nothing half made


async def test_address_required_gives_21631_with_the_fix(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError) as err:
        await call(p.create, props(sim, country="DE", number_type="local", bundle_sid=None))
    assert "21631" in str(err.value) and "add address: AD" in str(err.value)
    assert owned(sim) == {}


async def test_no_inventory_is_a_clear_error(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError) as err:
        await call(p.create, props(sim, number_type="toll_free"))
    text = str(err.value)
    assert text.startswith(ENTRY) and "no PK toll-free numbers in stock" in text
    assert "Fix:" in text


async def test_search_without_match_says_how_to_widen(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError, match="widen the search"):
        await call(
            p.create,
            props(sim, country="US", number_type="local", bundle_sid=None, area_code="907"),
        )


async def test_area_code_and_contains_filters_reach_the_search(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    result = await call(
        p.create,
        props(sim, country="US", number_type="local", bundle_sid=None, area_code="212"),
    )
    assert result.outs["phone_number"].startswith("+1212555")


async def test_update_changes_webhook_in_place(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    created = await call(p.create, props(sim))
    news = props(sim, voice_url="http://127.0.0.1:8787/twilio/voice2", friendly_name="renamed")
    diff = p.diff(created.id, created.outs, news)
    assert diff.changes and diff.replaces == []
    updated = await call(p.update, created.id, created.outs, news)
    number = owned(sim)[created.outs["phone_number"]]
    assert number.sid == created.id
    assert number.voice_url.endswith("/voice2") and number.friendly_name == "renamed"
    assert updated.outs["voice_url"].endswith("/voice2")


async def test_read_reports_drift_and_release_behind_pulumis_back(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    created = await call(p.create, props(sim))
    client = sim.rest_client()
    await asyncio.to_thread(
        lambda: client.incoming_phone_numbers(created.id).update(voice_url="https://evil.example")
    )
    read = await call(p.read, created.id, created.outs)
    assert read.id == created.id and read.outs["voice_url"] == "https://evil.example"
    assert p.diff(created.id, read.outs, props(sim)).changes  # next up restores it
    await asyncio.to_thread(lambda: client.incoming_phone_numbers(created.id).delete())
    gone = await call(p.read, created.id, created.outs)
    assert gone.id == ""


async def test_delete_keeps_protected_numbers_and_releases_unprotected(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    created = await call(p.create, props(sim))
    await call(p.delete, created.id, created.outs)
    assert created.outs["phone_number"] in owned(sim)
    unprotected = {**created.outs, "protected": False}
    await call(p.delete, created.id, unprotected)
    assert owned(sim) == {}
    await call(p.delete, created.id, unprotected)  # already gone: fine


async def test_import_by_sid_and_by_e164_buys_nothing(sim: Simulator) -> None:
    client = sim.rest_client()
    existing = await asyncio.to_thread(
        lambda: client.incoming_phone_numbers.create(phone_number="+14155550150")
    )
    p = TwilioPhoneNumberProvider()
    base = {"mode": "import", "country": None, "number_type": None, "bundle_sid": None}
    by_sid = await call(p.create, props(sim, **base, import_ref=existing.sid, friendly_name=None))
    by_e164 = await call(p.create, props(sim, **base, import_ref="+14155550150"))
    assert by_sid.id == by_e164.id == existing.sid
    assert len(owned(sim)) == 1
    assert owned(sim)["+14155550150"].voice_url == "http://127.0.0.1:8787/twilio/voice"
    with pytest.raises(ProvisioningError, match=r"import \+14155550199 is not a number"):
        await call(p.create, props(sim, **base, import_ref="+14155550199"))


async def test_bad_credentials_name_the_config_keys(sim: Simulator) -> None:
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError, match="callplane:twilioAuthToken"):
        await call(p.create, props(sim, auth_token="wrong"))


def test_diff_ignores_provider_code_and_outputs() -> None:
    p = TwilioPhoneNumberProvider()
    olds = {
        "__provider": "old-pickle",
        "sid": "PN1",
        "phone_number": "+1",
        "voice_url": "a",
        "country": "PK",
        "protected": True,
    }
    news = {"__provider": "new-pickle", "voice_url": "a", "country": "PK", "protected": True}
    assert p.diff("PN1", olds, news).changes is False


def test_diff_replaces_on_search_criteria_and_updates_protection() -> None:
    p = TwilioPhoneNumberProvider()
    olds = {"country": "PK", "number_type": "mobile", "protected": True}
    replace = p.diff("PN1", olds, {**olds, "country": "GB"})
    assert replace.replaces == ["country"]
    unprotect = p.diff("PN1", olds, {**olds, "protected": False})
    assert unprotect.changes and unprotect.replaces == []


async def test_21649_from_twilio_names_the_entry_buys_nothing_and_the_rerun_converges(
    sim: Simulator,
) -> None:
    # Twilio's own judgement (a bundle still in review): the config check passed, the purchase
    # is refused.
    sim.faults.add(
        Fault(
            method="POST",
            path="*/IncomingPhoneNumbers.json",
            params={"PhoneNumber": "+92*"},
            status=400,
            code=21649,
            message="Bundle BU… is not approved for this number",
            times=1,
        )
    )
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError) as err:
        await call(p.create, props(sim))
    text = str(err.value)
    assert text.startswith(ENTRY) and "Twilio error 21649" in text and "add bundle: BU" in text
    assert owned(sim) == {}
    again = await call(p.create, props(sim))
    assert list(owned(sim)) == [again.outs["phone_number"]]


async def test_no_inventory_answered_by_twilio_is_the_no_stock_error(sim: Simulator) -> None:
    sim.faults.add(
        Fault(method="GET", path="*/AvailablePhoneNumbers/PK/Mobile.json", status=404, code=20404)
    )
    p = TwilioPhoneNumberProvider()
    with pytest.raises(ProvisioningError, match=r"no PK mobile numbers in stock.*Fix:"):
        await call(p.create, props(sim))
    assert owned(sim) == {}


async def test_a_purchase_whose_answer_was_lost_is_adopted_not_bought_twice(
    sim: Simulator,
) -> None:
    # The purchase goes through, but its answer is held back until the provider gives up
    # (what a killed `pulumi up` sees): the number exists, Pulumi never recorded it.
    sim.faults.add(Fault(method="POST", path="*/IncomingPhoneNumbers.json", delay_s=3, times=1))
    p = TwilioPhoneNumberProvider()
    slow = dict(props(sim))

    def lost() -> None:
        from infra.providers import twilio_api

        before = twilio_api._TIMEOUT_S
        twilio_api._TIMEOUT_S = 0.5
        try:
            p.create(slow)
        finally:
            twilio_api._TIMEOUT_S = before

    with pytest.raises(ProvisioningError, match="could not buy"):
        await asyncio.to_thread(lost)
    (bought,) = owned(sim).values()
    rerun = await call(p.create, props(sim))
    assert rerun.id == bought.sid
    assert len(owned(sim)) == 1
