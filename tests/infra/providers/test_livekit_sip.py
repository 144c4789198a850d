"""LiveKitSipProvider against a real livekit-server with Redis (livekit-api client)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import api

from infra.providers.common import ProvisioningError
from infra.providers.livekit_sip import LiveKitSipProvider
from tests.infra.conftest import LiveKit


@dataclass(frozen=True)
class Made:
    id: str
    outs: dict[str, Any]


def props(lk: LiveKit, **extra: Any) -> dict[str, Any]:
    return {
        "url": lk.url,
        "api_key": lk.api_key,
        "api_secret": lk.api_secret,
        "trunk_name": "callplane-test",
        "rule_name": "callplane-test",
        "numbers": ["+923005550100", "+14155550100"],
        "agent_name": "callplane-agent",
        "room_prefix": "call-",
        "metadata": '{"stack": "test"}',
        **extra,
    }


def server_state(lk: LiveKit) -> tuple[list[Any], list[Any]]:
    async def go() -> tuple[list[Any], list[Any]]:
        client = api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret)
        try:
            trunks = await client.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
            rules = await client.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
            return list(trunks.items), list(rules.items)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_create_update_read_delete_on_livekit_server(livekit: LiveKit) -> None:
    p = LiveKitSipProvider()
    result = p.create(props(livekit))
    created = Made(result.id, result.outs or {})
    trunks, rules = server_state(livekit)
    (trunk,) = [t for t in trunks if t.sip_trunk_id == created.id]
    assert list(trunk.numbers) == ["+923005550100", "+14155550100"]
    (rule,) = [r for r in rules if r.sip_dispatch_rule_id == created.outs["dispatch_rule_id"]]
    assert list(rule.trunk_ids) == [created.id]
    assert rule.rule.dispatch_rule_individual.room_prefix == "call-"
    assert [a.agent_name for a in rule.room_config.agents] == ["callplane-agent"]

    # A rerun after an interrupted up adopts by name: no duplicates.
    again = p.create(props(livekit))
    assert again.id == created.id
    assert len(server_state(livekit)[0]) == 1

    news = props(livekit, numbers=["+14155550100"], agent_name="other-agent")
    assert p.diff(created.id, created.outs, news).replaces == []
    updated = Made(created.id, p.update(created.id, created.outs, news).outs or {})
    assert updated.outs["dispatch_rule_id"] == created.outs["dispatch_rule_id"]
    read_result = p.read(created.id, updated.outs)
    read = Made(read_result.id or "", read_result.outs or {})
    assert read.outs["numbers"] == ["+14155550100"]
    assert read.outs["agent_name"] == "other-agent"

    p.delete(created.id, updated.outs)
    assert server_state(livekit) == ([], [])
    assert p.read(created.id, updated.outs).id == ""
    p.delete(created.id, updated.outs)  # already gone: fine


def test_wrong_secret_names_the_config_keys(livekit: LiveKit) -> None:
    with pytest.raises(ProvisioningError, match="callplane:livekitApiSecret"):
        LiveKitSipProvider().create(
            props(livekit, api_secret="wrong-secret-wrong-secret-0123456789")
        )


def test_diff_replaces_on_another_server() -> None:
    p = LiveKitSipProvider()
    olds = {"url": "http://a", "api_key": "k", "numbers": ["+1"], "__provider": "x"}
    assert p.diff("ST_1", olds, {**olds, "__provider": "y"}).changes is False
    assert p.diff("ST_1", olds, {**olds, "url": "http://b"}).replaces == ["url"]
