"""The stack config schema and the country rules check: every error names key, value and fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import ConfigError, StackConfig, load, plan_numbers
from infra.countries import COUNTRY_RULES, NUMBER_TYPES
from tests.infra.conftest import BUNDLE

REPO = Path(__file__).resolve().parents[2]


def local(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "kind": "local",
        "twilio": {"accountSid": "AC" + "0" * 32, "apiBaseUrl": "http://127.0.0.1:8089"},
        "twilioAuthToken": "tok",
        "streamSecret": "s" * 20,
        "edge": {"url": "http://127.0.0.1:8787"},
        "media": {"urls": {"local": "ws://127.0.0.1:8788"}},
        "numbers": [{"country": "US", "type": "local", "areaCode": 415, "profile": "sales"}],
    }
    raw.update(over)
    return raw


def problems(raw: dict[str, Any], **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(raw, **kw)
    return err.value.problems


def test_local_stack_file_validates_and_plans_pk_us_gb() -> None:
    doc = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())["config"]
    config = load({k.split(":", 1)[1]: v for k, v in doc.items()})
    assert [(p.entry.country, p.entry.type) for p in plan_numbers(config)] == [
        ("PK", "mobile"),
        ("US", "local"),
        ("GB", "local"),
    ]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_example_cloud_stacks_validate_once_placeholders_are_filled(stack: str) -> None:
    text = (REPO / f"Pulumi.{stack}.yaml").read_text()
    text = re.sub(r"(AC|BU|PN)x{32}", lambda m: m.group(1) + "0" * 32, text)
    doc = yaml.safe_load(text)["config"]
    raw = {k.split(":", 1)[1]: v for k, v in doc.items() if k.startswith("callplane:")}
    secrets = {
        "twilioAuthToken": "t",
        "streamSecret": "s" * 20,
        "mediaApiKey": "m" * 10,
        "openaiApiKey": "sk",
        "livekitApiSecret": "l",
        "databaseUrl": "postgresql://callplane:pw@db.example.com:5432/callplane",
        "redisUrl": "rediss://:pw@redis.example.com:6379/0",
    }
    config = load({**raw, **secrets}, secret_keys=[f"callplane:{k}" for k in secrets])
    assert config.kind == "cloud" and config.modal is not None


def test_pk_without_bundle_names_entry_and_fix() -> None:
    (problem,) = problems(
        local(numbers=[{"country": "PK", "type": "mobile", "profile": "support"}])
    )
    assert problem.startswith("callplane:numbers[0].bundle is missing")
    assert "PK mobile" in problem and "unverified" in problem and "add bundle: BU" in problem


def test_pk_toll_free_is_refused_with_the_types_sold_and_the_override() -> None:
    raw = local(
        numbers=[{"country": "PK", "type": "toll-free", "bundle": BUNDLE, "profile": "support"}]
    )
    (problem,) = problems(raw)
    assert problem.startswith("callplane:numbers[0].type = 'toll_free'")
    assert "PK sells: mobile" in problem and "callplane:countries" in problem


def test_country_override_makes_a_request_possible() -> None:
    raw = local(
        numbers=[{"country": "PK", "type": "tollFree", "profile": "support"}],
        countries={"PK": {"toll_free": {"sold": True}}},
    )
    config = load(raw)
    fact = config.country_rules()["PK"].rule("toll_free").sold
    assert fact.value is True and not fact.verified and "stack config" in fact.source


def test_area_code_outside_nanp_and_unknown_country() -> None:
    raw = local(
        numbers=[
            {
                "country": "GB",
                "type": "local",
                "areaCode": 207,
                "bundle": BUNDLE,
                "profile": "support",
            },
            {"country": "ZZ", "type": "local", "profile": "support"},
        ]
    )
    found = problems(raw)
    assert found[0].startswith("callplane:numbers[0].areaCode = '207'")
    assert found[1].startswith("callplane:numbers[1].country = 'ZZ'")


def test_shape_errors_name_the_key_value_and_fix() -> None:
    raw = local(
        twilio={"accountSid": "AB123", "apiBaseUrl": "http://127.0.0.1:8089"},
        numbers=[
            {"country": "US", "type": "local", "profile": "support", "bundle": "BU123"},
            {"country": "US", "type": "landline", "profile": "support"},
            {"import": "12345", "profile": "support"},
            {"profile": "support"},
        ],
        edge={"url": "edge.example.com"},
        colour="blue",
    )
    found = "\n".join(problems(raw))
    assert "callplane:twilio.accountSid = 'AB123': not an Account SID. Fix:" in found
    assert "callplane:numbers[0].bundle = 'BU123': not a Bundle SID. Fix:" in found
    assert "callplane:numbers[1].type = 'landline'" in found
    assert "callplane:numbers[2].import = '12345'" in found
    assert "callplane:numbers[3] = " in found and "Fix: give country and type" in found
    assert "callplane:edge.url = 'edge.example.com'" in found
    assert "callplane:colour = 'blue': unknown key" in found


def test_secrets_are_never_shown_and_plaintext_is_refused_on_cloud() -> None:
    found = problems(local(streamSecret="short-secret"))
    assert "callplane:streamSecret = <secret, 12 characters>" in found[0]
    assert "short-secret" not in found[0]
    cloud = local(
        kind="cloud",
        twilio={"accountSid": "AC" + "0" * 32},
        edge={"url": "https://e.example.com", "cloudflare": {"accountId": "0" * 32}},
        modal={"workspace": "team"},
        mediaApiKey="m" * 10,
        openaiApiKey="sk",
        databaseUrl="postgresql://u:pw@db.example.com/callplane",
        redisUrl="rediss://:pw@redis.example.com:6379/0",
        profiles={"sales": {"instructions": "hi"}},
    )
    encrypted = ["mediaApiKey", "openaiApiKey", "databaseUrl", "redisUrl"]
    refused = problems(cloud, secret_keys=[f"callplane:{k}" for k in encrypted])
    assert any(p.startswith("callplane:twilioAuthToken is stored in plaintext") for p in refused)
    assert any(p.startswith("callplane:streamSecret is stored in plaintext") for p in refused)
    assert not any("mediaApiKey is stored" in p for p in refused)


def test_cloud_stack_cross_checks() -> None:
    cloud = local(
        kind="cloud",
        numbers=[{"country": "US", "type": "local", "profile": "nobody", "route": "sip"}],
        profiles={"sales": {"instructions": "hi", "voice": 3}},
    )
    found = "\n".join(problems(cloud))
    for text in (
        "callplane:twilio.apiBaseUrl",
        "callplane:modal is missing",
        "callplane:edge.cloudflare is missing",
        "callplane:mediaApiKey is missing",
        "callplane:databaseUrl is missing",
        "callplane:redisUrl is missing",
        "callplane:numbers[0].route = 'sip' needs callplane:livekit.sipUri",
        "callplane:numbers[0].profile = 'nobody'",
        "callplane:profiles.sales.voice",
    ):
        assert text in found


def test_local_stack_needs_the_simulator_url_and_a_sip_uri_for_sip_routing() -> None:
    raw = local(
        twilio={"accountSid": "AC" + "0" * 32},
        numbers=[{"country": "US", "type": "local", "profile": "support", "route": "sip"}],
    )
    found = "\n".join(problems(raw))
    assert "callplane:twilio.apiBaseUrl is missing on a local stack" in found
    assert "callplane:numbers[0].route = 'sip' needs callplane:livekit.sipUri" in found
    # The simulator serves Elastic SIP Trunking, so the local stack may route over SIP.
    ok = local(
        numbers=[{"country": "US", "type": "local", "profile": "support", "route": "sip"}],
        livekit={"url": "http://127.0.0.1:7880", "apiKey": "devkey", "sipUri": "sip:127.0.0.1"},
        livekitApiSecret="secret",
    )
    assert load(ok).numbers[0].route == "sip"


def test_web_key_and_link_secret_are_secrets_of_16_characters() -> None:
    found = "\n".join(problems(local(webKey="short", linkSecret="tiny")))
    assert "callplane:webKey = <secret, 5 characters>" in found
    assert "callplane:linkSecret = <secret, 4 characters>" in found
    assert "short" not in found and "tiny" not in found


def test_count_expands_with_stable_unique_names() -> None:
    config = load(
        local(
            numbers=[
                {
                    "country": "PK",
                    "type": "mobile",
                    "count": 2,
                    "bundle": BUNDLE,
                    "profile": "support",
                },
                {"import": "PN" + "a" * 32, "profile": "sales"},
            ]
        )
    )
    assert [p.name for p in plan_numbers(config)] == [
        "pk-mobile-support-1",
        "pk-mobile-support-2",
        "import-aaaaaaaaaaaa",
    ]
    clash = local(
        numbers=[
            {"country": "US", "type": "local", "profile": "support"},
            {"country": "US", "type": "local", "profile": "support", "areaCode": 212},
        ]
    )
    (problem,) = problems(clash)
    assert "callplane:numbers[1].name" in problem and "set a distinct name" in problem


def test_every_fact_says_whether_it_is_verified_and_where_from() -> None:
    for country in COUNTRY_RULES.values():
        for t in NUMBER_TYPES:
            rule = country.rule(t)
            for fact in (rule.sold, rule.bundle_required, rule.address_required):
                assert isinstance(fact.verified, bool) and fact.source
    pk = COUNTRY_RULES["PK"]
    assert pk.sold_types() == ["mobile"] and pk.rule("mobile").bundle_required.value is True


def test_stack_config_repr_hides_secrets() -> None:
    config = StackConfig.model_validate(local(twilioAuthToken="very-secret-token"))
    assert "very-secret-token" not in repr(config)


def test_shared_state_urls_must_be_postgres_and_redis() -> None:
    found = "\n".join(
        problems(local(databaseUrl="sqlite:////tmp/records.db", redisUrl="http://cache:6379"))
    )
    assert "callplane:databaseUrl has the scheme 'sqlite'" in found
    assert "postgresql+psycopg://" in found and "do not survive" in found
    assert "callplane:redisUrl has the scheme 'http'" in found
    assert "/tmp/records.db" not in found and "cache:6379" not in found  # secrets stay unshown


def test_modal_placement_settings_default_to_safe_and_are_checked() -> None:
    """region and nonpreemptible multiply Modal's price; their defaults are the Modal app's own
    (functions.deploy_settings), and a malformed value names the key and the fix."""
    from functions import deploy_settings
    from infra.config import ModalSettings

    defaults = ModalSettings(workspace="team")
    assert defaults.app_name == deploy_settings.DEFAULT_APP_NAME
    assert defaults.region == deploy_settings.DEFAULT_REGION
    assert defaults.nonpreemptible is deploy_settings.DEFAULT_NONPREEMPTIBLE
    unpinned = ModalSettings.model_validate({"workspace": "team", "region": None})  # YAML null
    assert unpinned.region == deploy_settings.ANY_REGION
    chosen = ModalSettings.model_validate(
        {"workspace": "team", "region": "eu-west", "nonpreemptible": "false"}
    )
    assert (chosen.region, chosen.nonpreemptible) == ("eu-west", False)
    found = "\n".join(
        problems(local(modal={"workspace": "team", "region": "US East", "appName": "Acme_Voice"}))
    )
    assert "callplane:modal.region = 'US East': not a Modal region. Fix:" in found
    assert "'any' to leave placement to Modal" in found
    assert "callplane:modal.appName = 'Acme_Voice': not a usable Modal app name" in found


def test_a_local_stack_number_naming_no_known_profile_fails_with_the_names_it_could_use() -> None:
    (problem,) = problems(local(numbers=[{"country": "US", "type": "local", "profile": "suport"}]))
    assert problem.startswith("callplane:numbers[0].profile = 'suport' is neither in")
    assert "['reminders', 'sales', 'support']" in problem
    assert "Fix: correct the name or add callplane:profiles.suport.instructions" in problem
