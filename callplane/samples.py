"""The sample agents: three profiles and the tools they use.

They are what ``callplane dev`` and ``callplane demo`` answer with, what a local stack that
names no profiles or tools module serves, the example cloud stacks' tools module
(``callplane.samples:SAMPLE_TOOLS``, in the media image with the library), and a template for
a team's own: a profile is configuration, a tool is a typed async function. ``support`` knows
the weather; ``sales`` looks up orders and does not know the weather, so the same question
gets a different answer on each number (which is how tests tell the profiles apart, since
the offline engine ignores free-text instructions).
"""

from __future__ import annotations

from typing import Any

from callplane.profiles import AgentProfile, RetryPolicy
from callplane.tools import Tool, tool

# What the sample weather tool reports, whatever the location.
SAMPLE_WEATHER = {"location": "San Francisco", "conditions": "sunny", "temperature": 72}


@tool
async def get_weather(location: str = "current") -> dict[str, Any]:
    """Current weather at a location ("current" means the caller's area)."""
    return dict(SAMPLE_WEATHER)


@tool
async def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order by its number and report its status."""
    if not order_id.isdigit():
        raise ValueError(f"order_id {order_id!r} must be digits only")
    return {"order_id": order_id, "status": "shipped" if int(order_id) % 2 else "processing"}


SAMPLE_TOOLS: dict[str, Tool] = {t.name: t for t in (get_weather, lookup_order)}

SAMPLE_PROFILES: dict[str, AgentProfile] = {
    "support": AgentProfile(
        name="support",
        instructions="You are the support line. Help with the weather and transfers; be brief.",
        greeting="Greet the caller and offer help with the weather.",
        tools=("get_weather", "end_call", "transfer_call"),
        transfer_targets={"billing": "+15005550006"},
        dtmf={"0": "transfer:billing", "9": "end_call"},
    ),
    "sales": AgentProfile(
        name="sales",
        instructions="You are the sales line. Look up orders; be brief.",
        greeting="Greet the caller and offer to look up an order.",
        voice="cedar",
        tools=("lookup_order", "end_call"),
    ),
    "reminders": AgentProfile(
        name="reminders",
        instructions="You call people to remind them of appointments. Be brief and polite.",
        outbound_greeting="Hello {name}, this is a reminder of your appointment {when}.",
        voicemail=(
            "Hello {name}, this is a reminder of your appointment {when}. "
            "Please call us back if you need to change it. Goodbye."
        ),
        tools=("end_call",),
        retry=RetryPolicy(max_attempts=3, backoff_s=(1.0,)),
    ),
}
