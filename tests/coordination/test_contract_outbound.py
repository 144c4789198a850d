"""The contract of the outbound dialer's shared state, for both stores.

Slot and queue leases are judged by the caller's ``now``, so most cases run on a made-up clock
(``T0`` plus offsets) and need no waiting.
"""

from __future__ import annotations

import asyncio
import random
import time

from callplane.coordination import MAX_STATUSES, OutboundState
from tests.coordination.conftest import Fleet

T0 = 1_800_000_000.0
LEASE_S = 30.0


async def queue_up(state: OutboundState, *jobs: str, now: float = T0) -> None:
    for job in jobs:
        admitted, _, _ = await state.admit(job, capacity=100, now=now)
        assert admitted, job


async def test_admission_stops_at_capacity(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    assert await a.admit("j1", capacity=3, now=T0) == (True, 0, 0)
    assert await b.admit("j2", capacity=3, now=T0) == (True, 0, 1)
    assert await a.take_slot("j1", max_concurrent=1, lease_s=LEASE_S, now=T0) is True
    # counted before adding: one live, one waiting
    assert await b.admit("j3", capacity=3, now=T0) == (True, 1, 1)
    assert await a.admit("j4", capacity=3, now=T0) == (False, 1, 2)
    assert await b.counts(T0) == (1, 2)
    await a.release_slot("j1")
    assert await b.admit("j4", capacity=3, now=T0) == (True, 0, 2)
    assert await a.counts(T0) == (0, 3)


async def test_admitting_a_job_again_keeps_its_place(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    await queue_up(a, "first", "second")
    assert await b.admit("first", capacity=2, now=T0 + 1) == (True, 0, 2)
    assert await b.take_slot("second", max_concurrent=1, lease_s=LEASE_S, now=T0 + 1) is False
    assert await b.take_slot("first", max_concurrent=1, lease_s=LEASE_S, now=T0 + 1) is True
    # a job holding a slot is admitted again without queueing
    assert await a.admit("first", capacity=1, now=T0 + 2) == (True, 1, 1)
    assert await a.counts(T0 + 2) == (1, 1)


async def test_slots_go_in_arrival_order_across_containers(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    for n, state in enumerate([a, b, a, b, a]):
        await queue_up(state, f"job-{n}", now=T0 + n)
    now = T0 + 10

    async def take(state: OutboundState, job: str) -> bool:
        return await state.take_slot(job, max_concurrent=2, lease_s=LEASE_S, now=now)

    # two slots free: only the first two waiting jobs may take them
    assert await take(b, "job-2") is False
    assert await take(a, "job-4") is False
    assert await take(b, "job-1") is True
    # one slot left: job-0 is first in line, so job-2 still waits
    assert await take(a, "job-2") is False
    assert await take(a, "job-0") is True
    assert await take(b, "job-2") is False  # no slot free at all
    assert await a.counts(now) == (2, 3)
    await b.release_slot("job-1")
    assert await take(a, "job-3") is False
    assert await take(b, "job-2") is True
    await a.release_slot("job-0")
    await a.leave_queue("job-3")  # cancelled while waiting: job-4 moves up
    assert await take(b, "job-4") is True
    assert await b.counts(now) == (2, 0)


async def test_a_retry_attempt_takes_a_free_slot_without_queueing(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    await queue_up(a, "waiting")
    # not queued: a retry of a job that went through the queue already
    assert await b.take_slot("retry", max_concurrent=2, lease_s=LEASE_S, now=T0) is True
    # holding a slot already: it keeps it
    assert await a.take_slot("retry", max_concurrent=1, lease_s=LEASE_S, now=T0) is True
    assert await a.counts(T0) == (1, 1)
    assert await a.take_slot("other", max_concurrent=1, lease_s=LEASE_S, now=T0) is False


async def test_a_lapsed_slot_lease_frees_the_slot(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    await queue_up(a, "dies", "lives", "next")
    assert await a.take_slot("dies", max_concurrent=2, lease_s=5, now=T0) is True
    assert await a.take_slot("lives", max_concurrent=2, lease_s=5, now=T0) is True
    for now in (T0 + 4, T0 + 8):
        await b.keep_waiting("next", lease_s=LEASE_S, now=now)
        await a.renew_slot("lives", lease_s=5, now=now)
    assert await b.counts(T0 + 4.9) == (2, 1)
    assert await b.counts(T0 + 5) == (1, 1)  # "dies" lapsed at T0 + 5, "lives" was renewed
    assert await b.take_slot("next", max_concurrent=2, lease_s=5, now=T0 + 9) is True
    # the lapsed holder cannot renew its way back in
    await a.renew_slot("dies", lease_s=5, now=T0 + 9)
    assert await a.counts(T0 + 9) == (2, 0)
    assert await a.take_slot("dies", max_concurrent=2, lease_s=5, now=T0 + 9) is False


async def test_a_waiter_that_stops_refreshing_loses_its_place(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    await a.admit("dead", capacity=2, now=T0, lease_s=10)
    await b.admit("alive", capacity=2, now=T0, lease_s=10)
    assert await b.admit("third", capacity=2, now=T0 + 5) == (False, 0, 2)
    assert await b.keep_waiting("alive", lease_s=10, now=T0 + 8) is True
    assert await a.counts(T0 + 11) == (0, 1)
    # the dead waiter's entry no longer blocks the queue, nor takes capacity
    assert await b.take_slot("alive", max_concurrent=1, lease_s=LEASE_S, now=T0 + 11) is True
    assert await b.admit("third", capacity=2, now=T0 + 11) == (True, 1, 0)
    # a waiter that comes back late learns it lost its place, and can queue again at the back
    assert await a.keep_waiting("dead", lease_s=10, now=T0 + 12) is False
    assert await a.admit("dead", capacity=3, now=T0 + 12) == (True, 1, 1)
    assert await a.take_slot("dead", max_concurrent=2, lease_s=LEASE_S, now=T0 + 12) is False
    assert await b.take_slot("third", max_concurrent=2, lease_s=LEASE_S, now=T0 + 12) is True
    assert await a.keep_waiting("gone", lease_s=10, now=T0 + 12) is False


async def test_thirty_jobs_from_two_containers_never_exceed_five_slots(fleet: Fleet) -> None:
    max_concurrent = 5
    stores = [fleet.first.outbound, fleet.second.outbound]
    holding: set[str] = set()
    peak = 0
    sampled: list[int] = []
    done = asyncio.Event()
    rng = random.Random(7)

    async def job(n: int) -> None:
        nonlocal peak
        state, name = stores[n % 2], f"job-{n:02d}"
        admitted, _, _ = await state.admit(name, capacity=40, now=time.time())
        assert admitted
        while not await state.take_slot(
            name, max_concurrent=max_concurrent, lease_s=LEASE_S, now=time.time()
        ):
            await state.keep_waiting(name, lease_s=LEASE_S, now=time.time())
            await asyncio.sleep(rng.uniform(0.001, 0.005))
        holding.add(name)
        peak = max(peak, len(holding))
        await asyncio.sleep(rng.uniform(0.005, 0.03))
        holding.discard(name)
        await state.release_slot(name)

    async def sample() -> None:
        while not done.is_set():
            live, _ = await stores[len(sampled) % 2].counts(time.time())
            sampled.append(live)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(job(n) for n in range(30)))
    done.set()
    await sampler
    assert peak == max_concurrent
    assert sampled and max(sampled) <= max_concurrent
    assert await stores[0].counts(time.time()) == (0, 0)


async def test_spend_adds_up_from_concurrent_containers(fleet: Fleet) -> None:
    stores = [fleet.first.outbound, fleet.second.outbound]
    totals = await asyncio.gather(*(stores[n % 2].add_spend("2026-01-02", 0.25) for n in range(40)))
    assert sorted(totals) == [0.25 * n for n in range(1, 41)]
    assert await stores[1].spent("2026-01-02") == 10.0
    assert await stores[0].spent("2026-01-03") == 0.0
    assert await stores[0].add_spend("2026-01-03", 0.1) == 0.1


async def test_status_callbacks_keep_their_arrival_order(fleet: Fleet) -> None:
    stores = [fleet.first.outbound, fleet.second.outbound]
    reports = [
        {"CallStatus": status, "SequenceNumber": str(n)}
        for n, status in enumerate(["initiated", "ringing", "in-progress", "completed"])
    ]
    for n, report in enumerate(reports):
        await stores[n % 2].push_status("CA1", report, 60)
    assert await stores[0].statuses("CA1") == reports
    assert await stores[1].statuses("CA-unknown") == []


async def test_only_the_latest_status_callbacks_are_kept(fleet: Fleet) -> None:
    state = fleet.first.outbound
    for n in range(MAX_STATUSES + 5):
        await state.push_status("CA2", {"SequenceNumber": str(n)}, 60)
    kept = await fleet.second.outbound.statuses("CA2")
    assert len(kept) == MAX_STATUSES
    assert kept[0] == {"SequenceNumber": "5"}
    assert kept[-1] == {"SequenceNumber": str(MAX_STATUSES + 4)}


async def test_status_callbacks_expire(fleet: Fleet) -> None:
    await fleet.first.outbound.push_status("CA3", {"CallStatus": "completed"}, 0.3)
    await asyncio.sleep(0.5)
    assert await fleet.second.outbound.statuses("CA3") == []


async def test_a_call_maps_to_its_job_until_it_expires(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    await a.map_call("CA4", "job-1", 60)
    await a.map_call("CA5", "job-2", 0.3)
    assert await b.job_for_call("CA4") == "job-1"
    assert await b.job_for_call("CA5") == "job-2"
    assert await b.job_for_call("CA6") is None
    await asyncio.sleep(0.5)
    assert await b.job_for_call("CA5") is None
    assert await b.job_for_call("CA4") == "job-1"


async def test_job_snapshots_are_replaced_and_expire(fleet: Fleet) -> None:
    a, b = fleet.first.outbound, fleet.second.outbound
    assert await b.load_job("job-1") is None
    await a.save_job("job-1", {"state": "queued", "attempts": 0}, 60)
    await b.save_job("job-1", {"state": "dialing", "attempts": 1, "to": ["+15550100"]}, 60)
    assert await a.load_job("job-1") == {"state": "dialing", "attempts": 1, "to": ["+15550100"]}
    await a.save_job("job-2", {"state": "done"}, 0.3)
    await asyncio.sleep(0.5)
    assert await b.load_job("job-2") is None
