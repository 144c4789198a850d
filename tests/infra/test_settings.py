"""The one generator of the media plane's settings and the edge's config (infra/settings.py),
``python -m infra settings``, and a media app started from a cloud stack's generated settings
with only its URLs and credentials pointed at local parts."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callplane.livekit_settings import LiveKitSettings
from callplane.media_settings import MediaSettings
from callplane_standins.twilio_simulator.simulator import Simulator
from functions.dispatch import ModalLauncher
from functions.media import create_app
from infra.config import ConfigError, load
from infra.program import media_urls
from infra.settings import caller_ids, media_settings, media_settings_document, redacted
from infra.stack_file import PLACEHOLDERS, read_stack_file
from tests.doubles import FakeFunction
from tests.livekit_server import LiveKitServer, livekit_server_fixture
from tests.servers import serve_asgi

REPO = Path(__file__).resolve().parents[2]
CLOUD_STACKS = ("dev", "prod")

livekit = livekit_server_fixture()


def cloud_settings(name: str) -> MediaSettings:
    """What ``pulumi up`` writes into the Modal secret for ``Pulumi.<name>.yaml``, with
    placeholder secrets."""
    found = read_stack_file(name, REPO)
    urls, http_urls, region = media_urls(found.config)
    return media_settings(found.config, urls[region], http_urls[region])


@pytest.mark.parametrize("name", CLOUD_STACKS)
def test_a_cloud_stack_s_settings_carry_everything_the_media_plane_reads(name: str) -> None:
    settings = cloud_settings(name)
    config = read_stack_file(name, REPO).config
    assert settings.livekit is not None
    assert settings.livekit.api_key == config.livekit.api_key if config.livekit else False
    assert settings.livekit.api_secret == PLACEHOLDERS["livekitApiSecret"]
    assert settings.edge_voice_url == config.edge.url + "/twilio/voice"
    assert settings.tools_module == config.tools_module
    assert "lookup_order" in settings.load_tools()
    assert settings.outbound.allowed_countries == ("US",)
    assert settings.outbound.calling_hours == (9, 20)
    assert settings.outbound.max_concurrent == 5
    assert settings.database_url is not None and settings.database_url.startswith(
        "postgresql+psycopg://"
    )
    assert settings.redis_url == PLACEHOLDERS["redisUrl"]
    assert settings.public_media_url.startswith("wss://my-team--")
    assert settings.public_http_url is not None and settings.public_http_url.startswith("https://")


def test_caller_ids_default_to_the_stack_s_numbers_one_per_country() -> None:
    numbers = [("+14155550100", "US"), ("+442071234567", "GB"), ("+14155550101", "US"), ("", "PK")]
    assert caller_ids(numbers) == {
        "default": "+14155550100",
        "US": "+14155550100",
        "GB": "+442071234567",
    }
    found = read_stack_file("dev", REPO)
    urls, http_urls, region = media_urls(found.config)
    settings = media_settings(found.config, urls[region], http_urls[region], numbers=numbers)
    assert settings.outbound.caller_id("GB") == "+442071234567"
    # Caller IDs the stack sets win over the default.
    raw = _dev_raw(outbound={"callerIds": {"default": "+14155550199"}})
    config = load(raw, secret_keys=set(PLACEHOLDERS))
    settings = media_settings(config, urls[region], http_urls[region], numbers=numbers)
    assert dict(settings.outbound.caller_ids) == {"default": "+14155550199"}


def _dev_raw(**changes: Any) -> dict[str, Any]:
    """Pulumi.dev.yaml's ``callplane:`` keys with placeholder secrets, and ``changes``."""
    import yaml

    document = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    raw = {
        k.partition(":")[2]: v for k, v in document["config"].items() if k.startswith("callplane:")
    }
    raw.update(PLACEHOLDERS)
    raw.update(changes)
    return raw


def test_a_profile_naming_a_tool_nobody_defines_fails_with_the_key_and_the_fix() -> None:
    raw = _dev_raw()
    raw["profiles"]["support"]["tools"] = ["end_call", "book_flight"]
    with pytest.raises(ConfigError) as caught:
        load(raw, secret_keys=set(PLACEHOLDERS))
    (problem,) = caught.value.problems
    assert problem.startswith("callplane:profiles.support.tools names 'book_flight'")
    assert "callplane:toolsModule = 'callplane.samples:SAMPLE_TOOLS'" in problem
    assert "Fix: define it with @callplane.tools.tool" in problem

    raw = _dev_raw(toolsModule="team_agents.tools:TOOLS")
    with pytest.raises(ConfigError) as caught:
        load(raw, secret_keys=set(PLACEHOLDERS))
    (problem,) = caught.value.problems
    assert problem.startswith("callplane:toolsModule = 'team_agents.tools:TOOLS'")
    assert "No module named 'team_agents'" in problem

    with pytest.raises(ConfigError, match=r"callplane:toolsModule = 'nocolon'.*package\.module"):
        load(_dev_raw(toolsModule="nocolon"), secret_keys=set(PLACEHOLDERS))


def test_bad_outbound_limits_and_origins_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"callplane:outbound = .*outbound\.max_concurrent"):
        load(_dev_raw(outbound={"maxConcurrent": 0}), secret_keys=set(PLACEHOLDERS))
    edge = {**_dev_raw()["edge"], "allowedOrigins": ["https://app.example.com/"]}
    with pytest.raises(ConfigError, match=r"'https://app.example.com/' is not an origin"):
        load(_dev_raw(edge=edge), secret_keys=set(PLACEHOLDERS))


def test_agent_caps_and_outbound_input_limits_reach_the_media_settings() -> None:
    found = read_stack_file("dev", REPO)
    urls, http_urls, region = media_urls(found.config)
    defaults = media_settings(found.config, urls[region], http_urls[region])
    assert defaults.livekit is not None
    assert (defaults.livekit.max_agent_jobs, defaults.livekit.max_agent_jobs_per_web_key) == (50, 5)
    assert defaults.outbound.max_context_bytes == 8192
    assert "PREMIUM_RATE" not in defaults.outbound.allowed_number_types
    assert defaults.outbound.webhook_hosts == () and defaults.outbound.webhook_loopback is False
    livekit = {**_dev_raw()["livekit"], "maxAgentJobs": 12, "maxAgentJobsPerWebKey": 3}
    outbound = {
        "allowedNumberTypes": ["mobile", "FIXED_LINE", "premium-rate"],
        "maxContextBytes": 2048,
        "webhookHosts": ["hooks.example.com", "*.example.org"],
    }
    config = load(_dev_raw(livekit=livekit, outbound=outbound), secret_keys=set(PLACEHOLDERS))
    settings = media_settings(config, urls[region], http_urls[region])
    assert settings.livekit is not None
    assert (settings.livekit.max_agent_jobs, settings.livekit.max_agent_jobs_per_web_key) == (12, 3)
    assert settings.outbound.allowed_number_types == ("MOBILE", "FIXED_LINE", "PREMIUM_RATE")
    assert settings.outbound.max_context_bytes == 2048
    assert settings.outbound.webhook_hosts == ("hooks.example.com", "*.example.org")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"outbound": {"webhookLoopback": True}},
            "callplane:outbound.webhookLoopback = true on a cloud stack",
        ),
        (
            {"outbound": {"webhookHosts": ["10.0.0.1"]}},
            "webhook_hosts entry '10.0.0.1' is not a public address",
        ),
        (
            {"outbound": {"allowedNumberTypes": ["premium"]}},
            "'premium' is not a number type",
        ),
        ({"outbound": {"maxContextBytes": 10**6}}, "outbound.max_context_bytes"),
    ],
)
def test_bad_input_limits_name_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(_dev_raw(**changes), secret_keys=set(PLACEHOLDERS))


def test_bad_agent_caps_name_the_key() -> None:
    livekit = {**_dev_raw()["livekit"], "maxAgentJobsPerWebKey": 0}
    with pytest.raises(ConfigError, match=r"callplane:livekit\.maxAgentJobsPerWebKey = 0"):
        load(_dev_raw(livekit=livekit), secret_keys=set(PLACEHOLDERS))


def test_tuning_may_shorten_durations_but_not_change_what_is_reachable() -> None:
    config = read_stack_file("dev", REPO).config
    doc = media_settings_document(
        config, "wss://m.example.com", tuning={"call_heartbeat_s": 1.0, "livekit.idle_timeout_s": 3}
    )
    assert doc["call_heartbeat_s"] == 1.0
    assert doc["livekit"]["idle_timeout_s"] == 3
    with pytest.raises(ValueError, match=r"'livekit\.url' is not a tuning knob"):
        media_settings_document(config, "wss://m", tuning={"livekit.url": "ws://x"})


def test_redaction_names_the_key_each_secret_comes_from() -> None:
    secrets = {"databaseUrl": "postgresql://u:pw@db/x", "mediaApiKey": "k" * 10}
    doc = {"database_url": "postgresql+psycopg://u:pw@db/x", "keys": ["k" * 10], "n": 3}
    assert redacted(doc, secrets, missing=["mediaApiKey"]) == {
        "database_url": "<secret from callplane:databaseUrl>",
        "keys": ["<missing: pulumi config set --secret callplane:mediaApiKey ...>"],
        "n": 3,
    }


def test_python_m_infra_settings_prints_what_pulumi_up_writes_before_the_secrets_are_set() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infra", "settings", "--stack", "dev"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["kind"] == "cloud"
    assert "callplane:openaiApiKey" in printed["missing"]
    media, edge = printed["media"], printed["edge"]
    assert media["realtime_api_key"].startswith("<missing: pulumi config set --secret")
    assert media["livekit"]["api_key"] == "APIxxxxxxxxxxxx"
    assert media["edge_voice_url"] == "https://callplane-edge-dev.example.workers.dev/twilio/voice"
    assert media["tools_module"] == "callplane.samples:SAMPLE_TOOLS"
    assert edge["livekit"]["allowed_origins"] == ["https://callplane-edge-dev.example.workers.dev"]
    # No placeholder leaks: every secret is shown as the key it comes from.
    for placeholder in PLACEHOLDERS.values():
        assert placeholder not in done.stdout
    assert "not set yet (placeholders used): callplane:twilioAuthToken" in done.stderr

    unknown = subprocess.run(
        [sys.executable, "-m", "infra", "settings", "--stack", "qa"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unknown.returncode == 2
    assert "no stack file Pulumi.qa.yaml" in unknown.stderr
    assert "'dev'" in unknown.stderr and "'prod'" in unknown.stderr


# ---- a media app from a cloud stack's settings, with local URLs and credentials ------------


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    sim = Simulator(tmp_path / "twilio.json", "AC" + "5" * 32, "simulator-auth-token")
    await sim.start(port=0)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def modal_agent_job() -> FakeFunction:
    """The deployed ``agent_job`` function the media app's Modal launcher spawns."""
    return FakeFunction()


@pytest.mark.parametrize("name", CLOUD_STACKS)
async def test_a_media_app_from_a_cloud_stack_s_settings_dispatches_agents_and_places_calls(
    name: str,
    tmp_path: Path,
    simulator: Simulator,
    livekit: LiveKitServer,
    modal_agent_job: FakeFunction,
) -> None:
    generated = cloud_settings(name)
    # Production and offline differ only in URLs and credentials.
    assert generated.livekit is not None
    local = generated.model_copy(
        update={
            "twilio_api_base_url": simulator.base_url,
            "twilio_account_sid": simulator.account_sid,
            "twilio_auth_token": simulator.auth_token,
            "livekit": LiveKitSettings(
                url=livekit.url,
                api_key=livekit.api_key,
                api_secret=livekit.api_secret,
                agent_name=generated.livekit.agent_name,
            ),
            "database_url": None,
            "redis_url": None,
            "records_path": tmp_path / "records.sqlite3",
        }
    )
    rest = simulator.rest_client()  # blocking: called off the loop the simulator runs on
    number = await asyncio.to_thread(
        rest.incoming_phone_numbers.create, phone_number="+14155550100"
    )
    local = local.model_copy(
        update={
            "outbound": local.outbound.model_copy(
                update={"caller_ids": {"default": number.phone_number}, "calling_hours": (0, 24)}
            )
        }
    )
    launcher = ModalLauncher(
        "callplane-media", environment_name=name, lookup=lambda *a, **k: modal_agent_job
    )
    app = create_app(local, local.load_tools(), launcher=launcher)
    headers = {"Authorization": f"Bearer {local.api_key}"}
    try:
        async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url, headers=headers) as http:
            dispatched = await http.post(
                "/agents/dispatch", json={"room": "web-lobby", "reason": "room_started"}
            )
            assert dispatched.status_code in (200, 202), dispatched.text
            assert [s["room"] for s in modal_agent_job.spawned] == ["web-lobby"]

            placed = await http.post("/calls", json={"to": "+14155550123", "profile": "sales"})
            assert placed.status_code == 202, placed.text
            job = placed.json()
            assert job["to"] == "+14155550123"
            for _ in range(100):
                calls = await asyncio.to_thread(rest.calls.list, to="+14155550123")
                if calls:
                    break
                await asyncio.sleep(0.05)
            # Dialled through Twilio's REST API from the stack's caller ID, with the edge's
            # voice webhook as the call's TwiML URL.
            assert [c.from_formatted for c in calls] == ["(415) 555-0100"]
    finally:
        await app.state.dialer.close()
        await app.state.agents.shutdown()
        await app.state.streams.aclose()
        app.state.store.close()
        await app.state.coordination.aclose()
