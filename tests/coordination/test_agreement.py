"""The two stores agree on random sequences of outbound admissions, slot takes and lease
lapses: whatever the in-process store answers, Redis answers too, step by step.

Property-style, with a seeded generator so every failure replays exactly (the seed is in the
test id). Times are multiples of 0.5 s and leases whole seconds, so both stores compare exact
binary floats and no case depends on rounding.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from callplane.coordination import OutboundState, connect
from callplane_dev.redis_server import LocalRedis

T0 = 1_800_000_000.0
JOBS = [f"job-{n}" for n in range(6)]
STEPS = 60


async def apply(state: OutboundState, op: tuple[Any, ...]) -> object:
    """Run one generated operation; what it returns, and the counts right after."""
    name, job, now, number, lease_s = op
    result: object = None
    if name == "admit":
        result = await state.admit(job, capacity=number, now=now, lease_s=lease_s)
    elif name == "keep_waiting":
        result = await state.keep_waiting(job, lease_s=lease_s, now=now)
    elif name == "take_slot":
        result = await state.take_slot(job, max_concurrent=number, lease_s=lease_s, now=now)
    elif name == "renew_slot":
        await state.renew_slot(job, lease_s=lease_s, now=now)
    elif name == "release_slot":
        await state.release_slot(job)
    else:
        await state.leave_queue(job)
    return result, await state.counts(now)


def operations(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    names = ["admit"] * 3 + ["keep_waiting"] * 2 + ["take_slot"] * 2
    names += ["renew_slot", "release_slot", "leave_queue"]
    now = T0
    ops: list[tuple[Any, ...]] = []
    for _ in range(STEPS):
        now += rng.choice([0.0, 0.0, 0.5, 1.0, 2.5])
        ops.append(
            (
                rng.choice(names),
                rng.choice(JOBS),
                now,
                rng.randint(1, 6),  # capacity for admit, max_concurrent for take_slot
                float(rng.choice([1, 2, 5])),
            )
        )
    return ops


@pytest.mark.parametrize("seed", range(30))
async def test_memory_and_redis_agree_on_outbound_sequences(
    seed: int, local_redis: LocalRedis, redis_prefix: str
) -> None:
    memory = connect(None)
    shared = connect(local_redis.url, prefix=redis_prefix)
    try:
        for step, op in enumerate(operations(seed)):
            expected = await apply(memory.outbound, op)
            got = await apply(shared.outbound, op)
            assert got == expected, f"step {step}: {op}"
    finally:
        await shared.aclose()
