"""LiveKitSip: a LiveKit SIP inbound trunk for the stack's numbers and a dispatch rule that
puts every call in its own room with the agent dispatched explicitly (``livekit-api``).

The id is the trunk id; the dispatch rule id is an output. Create is transactional: when the
rule cannot be made, the trunk just made is deleted again. A rerun after an interrupted ``up``
adopts a trunk and rule that already carry this resource's names instead of making duplicates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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

__all__ = ["LiveKitSip", "LiveKitSipProvider"]

T = TypeVar("T")

REPLACING = ("url", "api_key")
UPDATABLE = (
    "trunk_name",
    "rule_name",
    "numbers",
    "agent_name",
    "room_prefix",
    "metadata",
    "api_secret",
)


def _run(props: dict[str, Any], fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(lk)`` with a LiveKitAPI client made for this call (providers are sync)."""
    from livekit import api

    async def go() -> T:
        lk = api.LiveKitAPI(props["url"], props["api_key"], props["api_secret"])
        try:
            return await fn(lk)
        finally:
            await lk.aclose()

    try:
        return asyncio.run(go())
    except ProvisioningError:
        raise
    except Exception as exc:
        raise ProvisioningError(
            f"callplane:livekit: LiveKit at {props['url']} refused or failed: "
            f"{type(exc).__name__}: {exc}. Fix: check callplane:livekit.url, apiKey and the "
            "secret callplane:livekitApiSecret; a self-hosted livekit-server needs Redis for "
            "the SIP APIs"
        ) from None


def _trunk(props: dict[str, Any]) -> Any:
    from livekit import api

    return api.SIPInboundTrunkInfo(
        name=props["trunk_name"],
        numbers=list(props.get("numbers") or []),
        metadata=props.get("metadata") or "",
    )


def _rule(props: dict[str, Any], trunk_id: str) -> Any:
    from livekit import api

    return api.SIPDispatchRuleInfo(
        name=props["rule_name"],
        trunk_ids=[trunk_id],
        rule=api.SIPDispatchRule(
            dispatch_rule_individual=api.SIPDispatchRuleIndividual(
                room_prefix=props.get("room_prefix") or "call-"
            )
        ),
        room_config=api.RoomConfiguration(
            agents=[
                api.RoomAgentDispatch(
                    agent_name=props["agent_name"], metadata=props.get("metadata") or ""
                )
            ]
        ),
        metadata=props.get("metadata") or "",
    )


async def _find(lk: Any, trunk_name: str, rule_name: str) -> tuple[Any | None, Any | None]:
    from livekit import api

    trunks = await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
    trunk = next((t for t in trunks.items if t.name == trunk_name), None)
    rules = await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
    rule = next((r for r in rules.items if r.name == rule_name), None)
    return trunk, rule


class LiveKitSipProvider(ResourceProvider):
    serialize_as_secret_always = False

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_props(olds, news, updatable=UPDATABLE, replacing=REPLACING)

    def create(self, props: dict[str, Any]) -> CreateResult:
        async def go(lk: Any) -> tuple[str, str]:
            from livekit import api

            trunk, rule = await _find(lk, props["trunk_name"], props["rule_name"])
            made_trunk = trunk is None
            if trunk is None:
                trunk = await lk.sip.create_inbound_trunk(
                    api.CreateSIPInboundTrunkRequest(trunk=_trunk(props))
                )
            else:
                trunk = await lk.sip.update_inbound_trunk(trunk.sip_trunk_id, _trunk(props))
            try:
                if rule is None:
                    rule = await lk.sip.create_dispatch_rule(
                        api.CreateSIPDispatchRuleRequest(
                            dispatch_rule=_rule(props, trunk.sip_trunk_id)
                        )
                    )
                else:
                    rule = await lk.sip.update_dispatch_rule(
                        rule.sip_dispatch_rule_id, _rule(props, trunk.sip_trunk_id)
                    )
            except Exception:
                if made_trunk:
                    await lk.sip.delete_trunk(
                        api.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id)
                    )
                raise
            return trunk.sip_trunk_id, rule.sip_dispatch_rule_id

        trunk_id, rule_id = _run(props, go)
        return CreateResult(
            id_=trunk_id, outs={**props, "trunk_id": trunk_id, "dispatch_rule_id": rule_id}
        )

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        async def go(lk: Any) -> dict[str, Any] | None:
            from livekit import api

            trunks = await lk.sip.list_inbound_trunk(
                api.ListSIPInboundTrunkRequest(trunk_ids=[id_])
            )
            trunk = next((t for t in trunks.items if t.sip_trunk_id == id_), None)
            if trunk is None:
                return None
            rules = await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
            rule = next(
                (r for r in rules.items if r.sip_dispatch_rule_id == props.get("dispatch_rule_id")),
                None,
            )
            live: dict[str, Any] = {
                "trunk_name": trunk.name,
                "numbers": list(trunk.numbers),
                "dispatch_rule_id": rule.sip_dispatch_rule_id if rule else None,
            }
            if rule is not None:
                live["rule_name"] = rule.name
                live["room_prefix"] = rule.rule.dispatch_rule_individual.room_prefix
                agents = list(rule.room_config.agents)
                live["agent_name"] = agents[0].agent_name if agents else None
            return live

        live = _run(props, go)
        if live is None:
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs={**props, **live})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        async def go(lk: Any) -> str:
            from livekit import api

            await lk.sip.update_inbound_trunk(id_, _trunk(news))
            rule_id = olds.get("dispatch_rule_id")
            if rule_id:
                rule = await lk.sip.update_dispatch_rule(rule_id, _rule(news, id_))
            else:
                rule = await lk.sip.create_dispatch_rule(
                    api.CreateSIPDispatchRuleRequest(dispatch_rule=_rule(news, id_))
                )
            return str(rule.sip_dispatch_rule_id)

        rule_id = _run(news, go)
        return UpdateResult(outs={**news, "trunk_id": id_, "dispatch_rule_id": rule_id})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        async def go(lk: Any) -> None:
            from livekit import api

            rule_id = props.get("dispatch_rule_id")
            for call in (
                (
                    lambda: lk.sip.delete_dispatch_rule(
                        api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule_id)
                    )
                )
                if rule_id
                else None,
                lambda: lk.sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=id_)),
            ):
                if call is None:
                    continue
                try:
                    await call()
                except api.TwirpError as exc:
                    if exc.code != "not_found":
                        raise

        _run(props, go)


class LiveKitSip(Resource, module="livekit", name="Sip"):
    trunk_id: pulumi.Output[str]
    dispatch_rule_id: pulumi.Output[str]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(
            LiveKitSipProvider(), name, {"trunk_id": None, "dispatch_rule_id": None, **props}, opts
        )
