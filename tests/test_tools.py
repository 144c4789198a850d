from __future__ import annotations

import json
from typing import Literal

from callplane.tools import BUILTIN_TOOLS, ToolSet, tool
from tests.doubles import FakeCall


@tool
def lookup_order(order_id: str, include_items: bool = False) -> dict[str, object]:
    """Look up an order by its number.

    Longer text that the model does not need."""
    if order_id == "000":
        raise LookupError("no such order")
    return {"order_id": order_id, "status": "shipped", "items": 2 if include_items else None}


@tool(name="weather", description="Weather in a city.")
async def get_weather(city: str, unit: Literal["C", "F"] = "F") -> str:
    return json.dumps({"city": city, "unit": unit})


def test_schema_comes_from_the_type_hints() -> None:
    spec = lookup_order.spec()
    assert spec["name"] == "lookup_order"
    assert spec["description"] == "Look up an order by its number."
    assert spec["parameters"]["required"] == ["order_id"]
    assert spec["parameters"]["properties"]["include_items"]["type"] == "boolean"
    weather = get_weather.spec()
    assert weather["name"] == "weather"
    assert weather["parameters"]["properties"]["unit"]["enum"] == ["C", "F"]


def test_the_context_parameter_is_hidden_from_the_model() -> None:
    spec = BUILTIN_TOOLS["end_call"].spec()
    assert set(spec["parameters"]["properties"]) == {"reason"}


async def test_run_validates_and_returns_json() -> None:
    out = await lookup_order.run('{"order_id": "456", "include_items": true}', FakeCall())
    assert json.loads(out) == {"order_id": "456", "status": "shipped", "items": 2}


async def test_a_tool_exception_becomes_the_output_not_a_crash() -> None:
    out = await lookup_order.run('{"order_id": "000"}', FakeCall())
    assert json.loads(out) == {"error": "LookupError: no such order"}


async def test_bad_arguments_become_the_output() -> None:
    out = json.loads(await get_weather.run('{"city": "Oslo", "unit": "K"}', FakeCall()))
    assert "invalid arguments for weather" in out["error"]
    out = json.loads(await get_weather.run("{not json", FakeCall()))
    assert "invalid arguments" in out["error"]


async def test_builtins_act_on_the_call() -> None:
    call = FakeCall()
    await BUILTIN_TOOLS["end_call"].run('{"reason": "done"}', call)
    await BUILTIN_TOOLS["transfer_call"].run('{"to": "billing"}', call)
    assert call.hung_up and call.transferred == "billing"


async def test_a_transfer_reports_the_number_the_call_went_to() -> None:
    call = FakeCall(dialled="+15005550006")
    out = json.loads(await BUILTIN_TOOLS["transfer_call"].run('{"to": "billing"}', call))
    assert out == {"ok": True, "transferred_to": "+15005550006"}
    assert call.transferred == "billing"


async def test_a_transfer_that_did_not_happen_is_an_error_the_model_can_say() -> None:
    call = FakeCall(transfer_refusal="the phone network refused the transfer to +15005550006")
    out = json.loads(await BUILTIN_TOOLS["transfer_call"].run('{"to": "billing"}', call))
    assert out == {
        "ok": False,
        "error": "the phone network refused the transfer to +15005550006",
    }
    assert call.transferred is None


def test_a_toolset_without_some_tools_keeps_the_rest_in_order() -> None:
    tools = ToolSet([lookup_order, BUILTIN_TOOLS["transfer_call"], get_weather])
    fewer = tools.without({"transfer_call"})
    assert fewer.names() == ["lookup_order", "weather"]
    assert fewer.get("transfer_call") is None
    assert tools.names() == ["lookup_order", "transfer_call", "weather"]  # unchanged
