"""The contract of nonces, room leases, the jobs index and live calls, for both stores.

Entries with a ``ttl_s`` expire on the store's own clock, so those cases wait a few hundred
milliseconds of real time.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from callplane.coordination import MAX_JOBS, CapReached
from tests.coordination.conftest import Fleet

SHORT_TTL_S = 0.3
PAST_SHORT_TTL_S = 0.5


async def test_a_nonce_is_claimed_once_until_it_expires(fleet: Fleet) -> None:
    now = time.time()
    expires_at = now + SHORT_TTL_S
    assert await fleet.first.nonces.claim("n-1", expires_at, now) is True
    assert await fleet.first.nonces.claim("n-1", expires_at, now) is False
    # a replay landing on another container is caught too
    assert await fleet.second.nonces.claim("n-1", expires_at, now) is False
    assert await fleet.second.nonces.claim("n-2", expires_at, now) is True
    await asyncio.sleep(PAST_SHORT_TTL_S)
    later = time.time()
    assert await fleet.second.nonces.claim("n-1", later + 60, later) is True


async def test_an_expired_nonce_is_never_claimed(fleet: Fleet) -> None:
    now = time.time()
    assert await fleet.first.nonces.claim("late", now - 1, now) is False
    assert await fleet.first.nonces.claim("late", now, now) is False
    # and nothing was remembered for it
    assert await fleet.first.nonces.claim("late", now + 60, now) is True


async def test_a_lease_is_renewed_and_released_only_by_its_holder(fleet: Fleet) -> None:
    leases, other = fleet.first.leases, fleet.second.leases
    assert await leases.holder("room-a") is None
    assert await leases.acquire("room-a", "job-1", 30) == "job-1"
    assert await other.acquire("room-a", "job-2", 30) == "job-1"
    assert await leases.acquire("room-a", "job-1", 30) == "job-1"
    assert await other.holder("room-a") == "job-1"
    assert await other.renew("room-a", "job-2", 30) is False
    assert await other.release("room-a", "job-2") is False
    assert await other.holder("room-a") == "job-1"
    assert await other.renew("room-a", "job-1", 30) is True
    assert await other.release("room-a", "job-1") is True
    assert await leases.holder("room-a") is None
    assert await leases.release("room-a", "job-1") is False
    assert await leases.renew("room-a", "job-1", 30) is False
    assert await other.acquire("room-a", "job-2", 30) == "job-2"


async def test_agent_restarts_are_counted_per_room_across_containers_per_window(
    fleet: Fleet,
) -> None:
    first, second = fleet.first.leases, fleet.second.leases
    assert await first.note_restart("room-r", SHORT_TTL_S) == 1
    assert await second.note_restart("room-r", SHORT_TTL_S) == 2
    assert await first.note_restart("room-s", SHORT_TTL_S) == 1  # another room: its own count
    # a later count does not stretch the window: it ends SHORT_TTL_S after the first
    await asyncio.sleep(SHORT_TTL_S * 0.6)
    assert await first.note_restart("room-r", SHORT_TTL_S) == 3
    await asyncio.sleep(SHORT_TTL_S * 0.6)
    assert await second.note_restart("room-r", SHORT_TTL_S) == 1
    with pytest.raises(ValueError, match="window_s"):
        await first.note_restart("room-r", 0)


async def test_a_lapsed_lease_lets_another_job_take_the_room(fleet: Fleet) -> None:
    assert await fleet.first.leases.acquire("room-b", "job-1", SHORT_TTL_S) == "job-1"
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await fleet.second.leases.holder("room-b") is None
    assert await fleet.second.leases.acquire("room-b", "job-2", 30) == "job-2"
    # the first job's late renewal and release cannot take the room back or free it
    assert await fleet.first.leases.renew("room-b", "job-1", 30) is False
    assert await fleet.first.leases.release("room-b", "job-1") is False
    assert await fleet.first.leases.holder("room-b") == "job-2"


async def test_renewing_keeps_a_lease_past_its_first_ttl(fleet: Fleet) -> None:
    assert await fleet.first.leases.acquire("room-c", "job-1", SHORT_TTL_S) == "job-1"
    for _ in range(3):
        await asyncio.sleep(SHORT_TTL_S / 3)
        assert await fleet.first.leases.renew("room-c", "job-1", SHORT_TTL_S) is True
    assert await fleet.second.leases.holder("room-c") == "job-1"


async def test_concurrent_acquires_have_exactly_one_winner(fleet: Fleet) -> None:
    stores = [fleet.first, fleet.second]
    holders = await asyncio.gather(
        *(stores[i % 2].leases.acquire("room-d", f"job-{i}", 30) for i in range(5))
    )
    winner = await fleet.first.leases.holder("room-d")
    assert winner is not None
    assert set(holders) == {winner}
    assert sum(1 for i in range(5) if f"job-{i}" == winner) == 1


STACK = ("stack", 3)


async def test_caps_count_live_leases_across_containers(fleet: Fleet) -> None:
    """At most ``limit`` live leases per group, whichever container takes them; a room already
    held is returned whatever the caps; a full group is named, and nothing is taken."""
    first, second = fleet.first.leases, fleet.second.leases
    key_a = ("key:a", 2)
    assert await first.acquire("cap-1", "job-1", 30, caps=[STACK, key_a]) == "job-1"
    assert await second.acquire("cap-2", "job-2", 30, caps=[STACK, key_a]) == "job-2"
    with pytest.raises(CapReached) as full:
        await first.acquire("cap-3", "job-3", 30, caps=[STACK, key_a])
    assert (full.value.group, full.value.limit, full.value.held) == ("key:a", 2, 2)
    assert await second.holder("cap-3") is None  # nothing was taken
    # a held room is answered with its holder, even though its group is full
    assert await second.acquire("cap-1", "job-9", 30, caps=[STACK, key_a]) == "job-1"
    # another key has room under the stack's cap; then the stack is full for everyone
    assert await second.acquire("cap-4", "job-4", 30, caps=[STACK, ("key:b", 2)]) == "job-4"
    with pytest.raises(CapReached) as stack_full:
        await first.acquire("cap-5", "job-5", 30, caps=[STACK, ("key:c", 2)])
    assert (stack_full.value.group, stack_full.value.held) == ("stack", 3)
    assert [await first.held(g) for g in ("stack", "key:a", "key:b", "key:c")] == [3, 2, 1, 0]
    # a lease taken without caps counts nowhere
    assert await first.acquire("cap-free", "job-6", 30) == "job-6"
    assert await second.held("stack") == 3
    # releasing frees the place, for either container; a wrong holder frees nothing
    assert await second.release("cap-1", "job-9") is False
    assert await second.release("cap-1", "job-1") is True
    assert [await first.held(g) for g in ("stack", "key:a")] == [2, 1]
    assert await first.acquire("cap-3", "job-3", 30, caps=[STACK, key_a]) == "job-3"


async def test_a_lapsed_capped_lease_frees_its_place_and_a_renewed_one_keeps_it(
    fleet: Fleet,
) -> None:
    """A job whose container died stops renewing: its place comes free when its lease lapses.
    A job that is renewed (by its launcher or by itself) keeps its place past its first TTL."""
    one = [("solo", 1)]
    assert await fleet.first.leases.acquire("lapse-1", "job-1", SHORT_TTL_S, caps=one) == "job-1"
    with pytest.raises(CapReached):
        await fleet.second.leases.acquire("lapse-2", "job-2", 30, caps=one)
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await fleet.second.leases.held("solo") == 0
    assert await fleet.second.leases.acquire("lapse-2", "job-2", SHORT_TTL_S, caps=one) == "job-2"
    for _ in range(3):
        await asyncio.sleep(SHORT_TTL_S / 3)
        assert await fleet.first.leases.renew("lapse-2", "job-2", SHORT_TTL_S) is True
    with pytest.raises(CapReached):
        await fleet.first.leases.acquire("lapse-3", "job-3", 30, caps=one)
    # a late renewal of the lapsed job takes nothing back
    assert await fleet.first.leases.renew("lapse-1", "job-1", 30) is False
    assert await fleet.second.leases.held("solo") == 1


async def test_racing_for_the_last_place_under_a_cap_has_one_winner(fleet: Fleet) -> None:
    stores = [fleet.first, fleet.second]
    caps = [("race", 2)]
    assert await fleet.first.leases.acquire("race-0", "job-0", 30, caps=caps) == "job-0"

    async def take(i: int) -> str | None:
        try:
            return await stores[i % 2].leases.acquire(f"race-{i}", f"job-{i}", 30, caps=caps)
        except CapReached:
            return None

    won = [j for j in await asyncio.gather(*(take(i) for i in range(1, 9))) if j is not None]
    assert len(won) == 1
    assert await fleet.second.leases.held("race") == 2


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        ([("", 1)], "cap group '' is invalid"),
        ([("two words", 1)], "cap group 'two words' is invalid"),
        ([("g" * 65, 1)], "is invalid: use 1-64 characters"),
        ([("stack", 0)], "the cap of group 'stack' is 0"),
        ([("stack", True)], "the cap of group 'stack' is True"),
    ],
)
async def test_bad_caps_are_refused_alike(
    fleet: Fleet, caps: list[tuple[str, int]], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        await fleet.first.leases.acquire("bad-caps", "job-1", 30, caps=caps)
    assert await fleet.first.leases.holder("bad-caps") is None


async def test_jobs_are_listed_newest_first_and_replaced_by_job_id(fleet: Fleet) -> None:
    t0 = 1_700_000_000.0
    for n in range(4):
        await fleet.first.leases.put_job(
            {"job_id": f"job-{n}", "room": f"room-{n}", "started_at": t0 + n}, 30
        )
    await fleet.second.leases.put_job(
        {"job_id": "job-1", "room": "room-1", "started_at": t0 + 10, "state": "running"}, 30
    )
    jobs = await fleet.second.leases.jobs()
    assert [job["job_id"] for job in jobs] == ["job-1", "job-3", "job-2", "job-0"]
    assert jobs[0] == {
        "job_id": "job-1",
        "room": "room-1",
        "started_at": t0 + 10,
        "state": "running",
    }
    assert [job["job_id"] for job in await fleet.first.leases.jobs(limit=2)] == ["job-1", "job-3"]
    assert await fleet.first.leases.jobs(limit=0) == []


async def test_the_jobs_index_keeps_only_the_newest(fleet: Fleet) -> None:
    extra = 10
    jobs = [
        {"job_id": f"job-{n:04d}", "room": "r", "started_at": 1_700_000_000.0 + n}
        for n in range(MAX_JOBS + extra)
    ]
    await asyncio.gather(*(fleet.first.leases.put_job(job, 60) for job in jobs))
    listed = await fleet.second.leases.jobs(limit=MAX_JOBS + 100)
    assert len(listed) == MAX_JOBS
    assert listed[0]["job_id"] == f"job-{MAX_JOBS + extra - 1:04d}"
    assert listed[-1]["job_id"] == f"job-{extra:04d}"


async def test_an_expired_job_is_not_listed(fleet: Fleet) -> None:
    await fleet.first.leases.put_job({"job_id": "old", "room": "r", "started_at": 2.0}, SHORT_TTL_S)
    await fleet.first.leases.put_job({"job_id": "kept", "room": "r", "started_at": 1.0}, 30)
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert [job["job_id"] for job in await fleet.second.leases.jobs(limit=1)] == ["kept"]


@pytest.mark.parametrize(
    "job",
    [
        {"room": "r", "started_at": 1.0},
        {"job_id": "", "room": "r", "started_at": 1.0},
        {"job_id": "j", "started_at": 1.0},
        {"job_id": "j", "room": "r"},
        {"job_id": "j", "room": "r", "started_at": "yesterday"},
        {"job_id": "j", "room": "r", "started_at": True},
        {"job_id": "j", "room": "r", "started_at": float("nan")},
    ],
)
async def test_a_job_without_its_identity_is_refused(fleet: Fleet, job: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="job"):
        await fleet.first.leases.put_job(dict(job), 30)
    assert await fleet.first.leases.jobs() == []


async def test_live_call_snapshots_are_shared_expire_and_delete(fleet: Fleet) -> None:
    live, other = fleet.first.live, fleet.second.live
    assert await other.get("CA1") is None
    await live.put("CA1", {"state": "ringing", "turns": 0}, 30)
    await live.put("CA1", {"state": "in-progress", "turns": [1, 2]}, 30)
    assert await other.get("CA1") == {"state": "in-progress", "turns": [1, 2]}
    await other.delete("CA1")
    assert await live.get("CA1") is None
    await other.delete("CA1")  # deleting twice is harmless
    await live.put("CA2", {"state": "in-progress"}, SHORT_TTL_S)
    await asyncio.sleep(PAST_SHORT_TTL_S)
    assert await other.get("CA2") is None


async def test_a_stored_snapshot_is_a_copy(fleet: Fleet) -> None:
    data: dict[str, object] = {"path": ("a", "b")}
    await fleet.first.live.put("CA3", data, 30)
    data["path"] = "changed"
    assert await fleet.second.live.get("CA3") == {"path": ["a", "b"]}


@pytest.mark.parametrize("ttl_s", [0, -1.0, float("inf"), float("nan")])
async def test_a_non_positive_ttl_is_refused(fleet: Fleet, ttl_s: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await fleet.first.leases.acquire("room-e", "job-1", ttl_s)
    with pytest.raises(ValueError, match="ttl_s"):
        await fleet.first.live.put("CA4", {}, ttl_s)
    assert await fleet.first.leases.holder("room-e") is None


async def test_live_snapshots_are_put_many_at_once(fleet: Fleet) -> None:
    """A container refreshes all its live calls in one go; another container reads each."""
    snapshots = {f"CA{i}": {"state": "in-progress", "turns": i} for i in range(50)}
    await fleet.first.live.put_many(snapshots, 30)
    await fleet.first.live.put_many({}, 30)  # no live calls: nothing to do
    for sid, data in snapshots.items():
        assert await fleet.second.live.get(sid) == data


async def test_where_the_state_lives(fleet: Fleet) -> None:
    await fleet.first.ping()
    if fleet.backend == "memory":
        assert fleet.first.shared is False
        assert fleet.first.describe() == "in-process"
    else:
        assert fleet.first.shared is True
        assert fleet.first.describe().startswith("redis://127.0.0.1:")
