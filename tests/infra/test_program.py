"""The program's wiring under ``pulumi.runtime.set_mocks``: every component, no CLI.

The mocks stand in for the engine only (they answer resource registrations); the program, the
config validation, the dynamic resources' inputs (including the pickled providers) and the
pulumi-cloudflare resource are the real ones.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from typing import Any, cast

import pulumi
import pytest

from infra.edge_bundle import ENTRY_SOURCE, PYTHON_MODULE_TYPE, compute_bundle
from infra.program import EDGE_BUNDLE, REPO, Stack, read_config
from infra.providers.modal_app import expected_web_url, plan
from tests.infra.conftest import BUNDLE


def pulumi_test(fn: Callable[[], Any]) -> Callable[[], None]:
    """``pulumi.runtime.test`` (untyped upstream): run ``fn`` under the mocks, then wait for
    every output it returns."""
    return cast(Callable[[], None], pulumi.runtime.test(fn))  # type: ignore[no-untyped-call]


MOCK_NUMBERS = {"number-pk-mobile-support": "+14155550001", "number-us-local-sales": "+14155550002"}


def mock_number(name: str) -> str:
    """The number the mocks "buy" for the resource ``name``."""
    return MOCK_NUMBERS.get(name, f"+1415555{zlib.crc32(name.encode()) % 9000 + 1000:04d}")


class Engine(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outs = dict(args.inputs)
        if args.typ.endswith("twilio:PhoneNumber"):
            # From the name, not the registration order: Pulumi registers resources
            # concurrently, so a counter would give the same number to a different entry.
            number = mock_number(args.name)
            outs.update(sid=f"PN{int(number[1:]):032x}", phone_number=number)
        elif args.typ.endswith("twilio:SipTrunk"):
            outs["trunk_sid"] = "TK" + "1" * 32
        elif args.typ.endswith("livekit:Sip"):
            outs.update(trunk_id="ST_trunk", dispatch_rule_id="SDR_rule")
        elif args.typ.endswith("modal:App"):
            outs["web_url"] = "https://team--callplane-media-prod.modal.run"
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []

    def of(self, suffix: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ.endswith(suffix)]


SECRET_SIG = "4dabf18193072939515e22adb298388d"


def unsecret(value: Any) -> Any:
    """A secret input reaches the mocks wrapped with Pulumi's secret signature."""
    if isinstance(value, dict) and SECRET_SIG in value:
        return value["value"]
    return value


def use(stack: str, config: dict[str, Any], secret: tuple[str, ...] = ()) -> Engine:
    engine = Engine()
    pulumi.runtime.set_mocks(engine, project="callplane", stack=stack, preview=False)
    pulumi.runtime.set_all_config(
        {f"callplane:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        [f"callplane:{k}" for k in secret],
    )
    return engine


LOCAL: dict[str, Any] = {
    "kind": "local",
    "twilio": {"accountSid": "AC" + "0" * 32, "apiBaseUrl": "http://127.0.0.1:8089"},
    "twilioAuthToken": "tok",
    "streamSecret": "s" * 20,
    "edge": {"url": "http://127.0.0.1:8787"},
    "media": {"urls": {"local": "ws://127.0.0.1:8788"}},
    "livekit": {"url": "http://127.0.0.1:7880", "apiKey": "devkey"},
    "livekitApiSecret": "secret",
    "numbers": [
        {"country": "PK", "type": "mobile", "bundle": BUNDLE, "profile": "support"},
        {"country": "US", "type": "local", "areaCode": 415, "profile": "sales", "protect": False},
    ],
}

CLOUD: dict[str, Any] = {
    **{k: v for k, v in LOCAL.items() if k not in ("media",)},
    "kind": "cloud",
    "twilio": {"accountSid": "AC" + "0" * 32},
    "edge": {"url": "https://edge.example.com", "cloudflare": {"accountId": "0" * 32}},
    "modal": {"workspace": "team", "scaling": "prod"},
    "livekit": {
        "url": "https://p.livekit.cloud",
        "apiKey": "API1",
        "sipUri": "sip:abc.sip.livekit.cloud",
    },
    "mediaApiKey": "m" * 12,
    "openaiApiKey": "sk-test",
    "databaseUrl": "postgresql://callplane:pw@db.example.com:5432/callplane",
    "redisUrl": "rediss://:pw@redis.example.com:6379/0",
    "profiles": {"support": {"instructions": "Help."}, "sales": {"instructions": "Sell."}},
    "numbers": [
        {"country": "US", "type": "local", "profile": "sales", "route": "sip"},
        {"import": "+14155550111", "profile": "support"},
    ],
}
CLOUD_SECRETS = (
    "twilioAuthToken",
    "streamSecret",
    "livekitApiSecret",
    "mediaApiKey",
    "openaiApiKey",
    "databaseUrl",
    "redisUrl",
)


@pulumi_test
def test_local_stack_points_numbers_at_the_local_edge() -> Any:
    engine = use("local", LOCAL)
    stack = Stack(read_config(), "local")

    def check(_: Any) -> None:
        numbers = {n.name: n.inputs for n in engine.of("twilio:PhoneNumber")}
        assert sorted(numbers) == ["number-pk-mobile-support", "number-us-local-sales"]
        pk, us = numbers["number-pk-mobile-support"], numbers["number-us-local-sales"]
        assert pk["voice_url"] == "http://127.0.0.1:8787/twilio/voice"
        assert pk["status_callback"] == "http://127.0.0.1:8787/twilio/status"
        assert pk["api_base_url"] == "http://127.0.0.1:8089"
        assert (pk["country"], pk["number_type"], pk["bundle_sid"]) == ("PK", "mobile", BUNDLE)
        assert pk["protected"] is True and us["protected"] is False
        assert us["area_code"] == "415" and "__provider" in pk
        assert unsecret(pk["auth_token"]) == "tok" and pk["auth_token"] != "tok"  # secret
        assert pk["friendly_name"] == "callplane local pk-mobile-support"
        assert engine.of("modal:App") == [] and engine.of("WorkersScript") == []
        assert engine.of("twilio:SipTrunk") == []
        (lk,) = engine.of("livekit:Sip")
        assert lk.inputs["numbers"] == ["+14155550001", "+14155550002"]
        assert lk.inputs["trunk_name"] == "callplane-local"

    def check_edge(doc: str) -> None:
        edge = json.loads(doc)
        assert edge["numbers"] == {
            "+14155550001": {"profile": "support", "region": "local"},
            "+14155550002": {"profile": "sales", "region": "local"},
        }
        assert edge["media_urls"] == {"local": "ws://127.0.0.1:8788"}
        assert edge["public_url"] == "http://127.0.0.1:8787"

    assert stack.livekit is not None

    def both(values: list[Any]) -> None:
        check(values)
        check_edge(values[1])

    return pulumi.Output.all(stack.livekit.trunk_id, stack.edge.config_json).apply(both)


def check_worker_upload(inputs: dict[str, Any]) -> None:
    """The WorkersScript carries the computed bundle: the entry as the main module's content,
    every other module as a Python file part (read back from the folder it was written to), and
    the built playground as static assets."""
    expected = compute_bundle(REPO)
    assert inputs["mainModule"] == "worker_entry.py" == expected.main_module
    assert (inputs["content"], inputs["contentType"]) == (ENTRY_SOURCE, PYTHON_MODULE_TYPE)
    folder = REPO / EDGE_BUNDLE / "callplane-edge"
    uploaded = inputs["files"]
    assert set(uploaded) == set(expected.files) - {"worker_entry.py"}
    assert {"edge_worker/livekit_routes.py", "edge_worker/__init__.py"} <= set(uploaded)
    assert "edge_worker/asgi.py" not in uploaded
    for rel, part in uploaded.items():
        assert part["contentType"] == "text/x-python", rel
        assert base64.b64decode(part["contentBase64"]) == (folder / rel).read_bytes(), rel
        assert (folder / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    assets = inputs["assets"]
    assert assets["directory"] == str(folder / "assets")
    assert assets["config"] == {"htmlHandling": "auto-trailing-slash"}
    assert (folder / "assets" / "playground" / "index.html").read_bytes() == (
        REPO / "web" / "dist" / "index.html"
    ).read_bytes()
    assert inputs["compatibilityDate"] == "2025-09-01"
    assert inputs["compatibilityFlags"] == ["python_workers", "python_workers_20250116"]


@pulumi_test
def test_cloud_stack_wires_modal_cloudflare_sip_trunk_and_import() -> Any:
    engine = use("prod", CLOUD, CLOUD_SECRETS)
    stack = Stack(read_config(), "prod")

    def check(_: Any) -> None:
        (modal,) = engine.of("modal:App")
        assert modal.inputs["environment"] == "prod" and modal.inputs["scaling"] == "prod"
        media = json.loads(unsecret(modal.inputs["media_config"]))
        # Twilio's streams go to the picows stream function; status callbacks to the media app
        assert media["public_media_url"] == (
            "wss://team--callplane-media-prod-streams.modal.run/twilio/media"
        )
        assert media["public_http_url"] == "https://team--callplane-media-prod.modal.run"
        assert set(media["profiles"]) == {"support", "sales"}
        # every container shares one records database (with the image's driver) and Redis
        assert media["database_url"] == (
            "postgresql+psycopg://callplane:pw@db.example.com:5432/callplane"
        )
        assert media["redis_url"] == "rediss://:pw@redis.example.com:6379/0"
        (trunk,) = engine.of("twilio:SipTrunk")
        assert trunk.inputs["origination_sip_url"] == "sip:abc.sip.livekit.cloud"
        by_name = {n.name: n.inputs for n in engine.of("twilio:PhoneNumber")}
        sip, imported = by_name["number-us-local-sales"], by_name["number-import-14155550111"]
        assert sip["trunk_sid"] == "TK" + "1" * 32 and "trunk_sid" not in imported
        assert imported["mode"] == "import" and imported["import_ref"] == "+14155550111"
        assert "country" not in imported
        (script,) = engine.of("WorkersScript")
        check_worker_upload(script.inputs)
        (binding,) = unsecret(script.inputs["bindings"])
        assert binding["name"] == "CALLPLANE_EDGE_CONFIG" and binding["type"] == "secret_text"
        edge = json.loads(unsecret(binding["text"]))
        assert edge["media_urls"] == {
            "default": "wss://team--callplane-media-prod-streams.modal.run"
        }

    assert stack.media.app is not None
    return pulumi.Output.all(
        stack.media.app.web_url, stack.edge.config_json, stack.edge.script.id
    ).apply(check)


@pulumi_test
def test_a_non_default_app_name_gives_the_same_names_to_the_edge_and_the_modal_app() -> Any:
    """callplane:modal.appName, region and nonpreemptible reach the ModalApp, and the Modal app
    imported with its inputs declares the very labels the edge's URLs were built from."""
    modal_config = {
        "workspace": "team",
        "scaling": "prod",
        "appName": "acme-voice",
        "region": "eu-west",
        "nonpreemptible": False,
    }
    engine = use("prod", {**CLOUD, "modal": modal_config}, CLOUD_SECRETS)
    stack = Stack(read_config(), "prod")

    def check(values: list[Any]) -> None:
        (modal,) = engine.of("modal:App")
        inputs = modal.inputs
        assert (inputs["app_name"], inputs["region"], inputs["nonpreemptible"]) == (
            "acme-voice",
            "eu-west",
            False,
        )
        expected = inputs["expected_urls"]
        assert expected == {
            "media": "https://team--acme-voice-prod.modal.run",
            "media_streams": "https://team--acme-voice-prod-streams.modal.run",
        }
        deploy = plan(dict(inputs))
        assert expected_web_url("team", deploy.label) == expected["media"]
        assert expected_web_url("team", deploy.streams_label) == expected["media_streams"]
        assert deploy.app_name == deploy.launcher_app_name == "acme-voice"
        assert deploy.regions == ("eu-west",) and deploy.nonpreemptible is False
        media = json.loads(unsecret(inputs["media_config"]))
        assert media["public_http_url"] == expected["media"]
        assert media["public_media_url"] == (
            "wss://team--acme-voice-prod-streams.modal.run/twilio/media"
        )
        edge = json.loads(values[0])
        assert edge["media_urls"] == {"default": "wss://team--acme-voice-prod-streams.modal.run"}
        assert edge["livekit"]["dispatch_url"] == (
            "https://team--acme-voice-prod.modal.run/agents/dispatch"
        )

    # The Modal app's inputs wait for the numbers (its caller IDs): wait for it to register.
    assert stack.media.app is not None
    return pulumi.Output.all(stack.edge.config_json, stack.media.app.urn).apply(check)


@pulumi_test
def test_secrets_reach_resources_as_secrets() -> Any:
    use("local", LOCAL)
    stack = Stack(read_config(), "local")
    number = stack.telephony.numbers[0].resource

    async def flags() -> list[bool]:
        return [
            await stack.edge.config_json.is_secret(),
            await number.auth_token.is_secret(),  # type: ignore[attr-defined]
        ]

    def check(found: list[bool]) -> None:
        assert found == [True, True]

    awaited: Any = flags()
    return pulumi.Output.from_input(awaited).apply(check)


def test_bad_config_fails_before_any_resource_is_declared() -> None:
    bad = {**LOCAL, "numbers": [{"country": "PK", "type": "toll_free", "profile": "support"}]}
    engine = use("local", bad)
    from infra.program import run

    with pytest.raises(pulumi.RunError, match=r"callplane:numbers\[0\]\.type = 'toll_free'"):
        run()
    assert engine.resources == []
