"""The waits between attempts to re-open a Realtime session during an outage."""

from __future__ import annotations

import itertools

import pytest

from callplane.realtime.backoff import backoff_schedule


def test_without_jitter_the_waits_double_up_to_the_cap_and_fill_the_budget() -> None:
    waits = backoff_schedule(30.0, first_s=0.25, cap_s=4.0, rand=lambda: 0.0)
    assert waits[:6] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert max(waits) == 4.0
    assert sum(waits) == pytest.approx(30.0)
    # 0.25 + 0.5 + 1 + 2 = 3.75, then 4 s waits: six of them (27.75), and the 2.25 s left
    assert waits[4:] == [4.0] * 6 + [pytest.approx(2.25)]


def test_jitter_takes_off_at_most_its_share_and_still_fills_the_budget() -> None:
    shares = itertools.cycle([0.0, 0.99, 0.5])
    waits = backoff_schedule(20.0, first_s=0.2, cap_s=2.0, jitter=0.5, rand=lambda: next(shares))
    assert sum(waits) == pytest.approx(20.0)
    step = 0.2
    for wait in waits[:-1]:
        assert step * 0.5 <= wait <= step
        step = min(step * 2, 2.0)
    assert waits[1] == pytest.approx(0.4 * (1 - 0.5 * 0.99))


def test_random_schedules_differ_so_dropped_calls_do_not_retry_in_step() -> None:
    first = backoff_schedule(30.0)
    second = backoff_schedule(30.0)
    assert first != second
    assert sum(first) == pytest.approx(30.0) and sum(second) == pytest.approx(30.0)


def test_a_short_budget_cuts_the_first_wait_and_none_gives_no_retry() -> None:
    assert backoff_schedule(0.1, first_s=0.2, rand=lambda: 0.0) == [pytest.approx(0.1)]
    assert backoff_schedule(0.0) == []


@pytest.mark.parametrize(
    ("first_s", "cap_s", "jitter", "says"),
    [(0.0, 1.0, 0.5, "first_s"), (2.0, 1.0, 0.5, "cap_s"), (0.1, 1.0, 1.0, "jitter")],
)
def test_a_schedule_that_cannot_work_is_refused(
    first_s: float, cap_s: float, jitter: float, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        backoff_schedule(10.0, first_s=first_s, cap_s=cap_s, jitter=jitter)
