"""The contract of call streams (one media stream per CallSid, ever), for both stores: a claim
is seen by every container, is taken by exactly one of several concurrent streams, stays
after the stream ends, and lapses only after its TTL."""

from __future__ import annotations

import asyncio

import pytest

from callplane.coordination import CALL_STREAM_KEEP_S
from callplane.coordination.memory import MemoryCallStreams
from tests.coordination.conftest import Fleet

SHORT_TTL_S = 0.3
PAST_SHORT_TTL_S = 0.5


async def test_the_first_stream_takes_the_call_for_every_container(fleet: Fleet) -> None:
    streams, other = fleet.first.streams, fleet.second.streams
    assert await other.holder("CA1") is None
    assert await streams.claim("CA1", "stream MZ1 on a:1") is None
    # the same description again is no key to the call: only the first claim wins
    assert await streams.claim("CA1", "stream MZ1 on a:1") == "stream MZ1 on a:1"
    assert await other.claim("CA1", "stream MZ2 on b:2") == "stream MZ1 on a:1"
    assert await other.holder("CA1") == "stream MZ1 on a:1"
    assert await other.claim("CA2", "stream MZ3 on b:2") is None  # another call is free


async def test_concurrent_streams_for_one_call_have_exactly_one_winner(fleet: Fleet) -> None:
    stores = [fleet.first.streams, fleet.second.streams]
    answers = await asyncio.gather(
        *(stores[i % 2].claim("CA-race", f"stream MZ{i}") for i in range(8))
    )
    winners = [i for i, first in enumerate(answers) if first is None]
    assert len(winners) == 1
    (winner,) = winners
    assert {first for first in answers if first is not None} == {f"stream MZ{winner}"}
    assert await fleet.second.streams.holder("CA-race") == f"stream MZ{winner}"


async def test_a_claim_lapses_only_after_its_ttl(fleet: Fleet) -> None:
    assert await fleet.first.streams.claim("CA3", "stream MZ1", SHORT_TTL_S) is None
    assert await fleet.second.streams.claim("CA3", "stream MZ2", SHORT_TTL_S) == "stream MZ1"
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await fleet.second.streams.holder("CA3") is None
    assert await fleet.second.streams.claim("CA3", "stream MZ2") is None


@pytest.mark.parametrize("ttl_s", [0, -1.0, float("inf"), float("nan")])
async def test_a_non_positive_claim_ttl_is_refused(fleet: Fleet, ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await fleet.first.streams.claim("CA4", "stream MZ1", ttl_s)
    assert await fleet.first.streams.holder("CA4") is None


def test_the_default_claim_outlives_any_call_and_token() -> None:
    longest_call_s = 24 * 3600  # Twilio's longest time limit for a call
    longest_token_s = 3600  # mint_stream_token refuses a longer ttl_s
    assert longest_call_s + longest_token_s < CALL_STREAM_KEEP_S


async def test_the_in_process_store_is_bounded_and_forgets_the_oldest_calls_first() -> None:
    clock = [1000.0]
    streams = MemoryCallStreams(clock=lambda: clock[0], max_entries=3)
    for n in range(3):
        clock[0] += 1
        assert await streams.claim(f"CA{n}", f"stream {n}") is None
    clock[0] += 1
    assert await streams.claim("CA3", "stream 3") is None
    assert len(streams) == 3
    assert await streams.holder("CA0") is None  # the oldest claim made room
    assert [await streams.holder(f"CA{n}") for n in (1, 2, 3)] == [
        "stream 1",
        "stream 2",
        "stream 3",
    ]
    with pytest.raises(ValueError, match="max_entries"):
        MemoryCallStreams(max_entries=0)
