"""OrderedWriter on its own, with a list standing in for the database."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from callplane.records.writer import OrderedWriter
from tests.support.waiting import until


class Unreachable(Exception):
    """What the stand-in database raises while it is down."""


class Database:
    """Commits batches into ``rows``; refuses ``bad`` items; raises Unreachable while down."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.bad: set[str] = set()
        self.up = threading.Event()
        self.up.set()
        self.batches = 0

    def apply(self, items: list[str]) -> None:
        if not self.up.is_set():
            raise Unreachable("connection refused")
        if self.bad & set(items):
            raise ValueError("refused")
        self.batches += 1
        self.rows.extend(items)


@pytest.fixture
def db() -> Database:
    return Database()


@pytest.fixture
def writer(db: Database) -> Iterator[OrderedWriter[str]]:
    w: OrderedWriter[str] = OrderedWriter(
        db.apply,
        droppable=lambda item: item.startswith("p"),
        transient=lambda exc: isinstance(exc, Unreachable),
        where="the test list",
        max_pending=4,
        retry_max_s=0.05,
    )
    yield w
    w.close(2)


def test_items_land_in_order_and_wait_returns_once_they_have(
    db: Database, writer: OrderedWriter[str]
) -> None:
    for n in range(3):
        writer.put(f"s{n}")
    assert writer.wait(5)
    assert db.rows == ["s0", "s1", "s2"]
    assert writer.pending == 0 and writer.dropped == 0 and writer.healthy


def test_a_refused_item_is_discarded_and_the_rest_of_its_batch_still_lands(
    db: Database, writer: OrderedWriter[str]
) -> None:
    db.bad = {"s1"}
    db.up.clear()  # hold the items so that they go in one batch
    for item in ("s0", "s1", "s2"):
        writer.put(item)
    db.up.set()
    assert writer.wait(5)
    assert db.rows == ["s0", "s2"]
    assert writer.dropped == 1


async def test_while_down_the_oldest_droppable_items_go_first(
    db: Database, writer: OrderedWriter[str]
) -> None:
    db.up.clear()
    writer.put("start")
    await until(lambda: not writer.healthy, 5, "the first failed attempt")
    for n in range(6):
        writer.put(f"p{n}")
    writer.put("end")
    assert writer.pending == 4
    assert writer.dropped == 4
    assert not await writer.wait_async(0.2)  # still down: not written yet
    db.up.set()
    assert await writer.wait_async(5)
    assert db.rows == ["start", "p4", "p5", "end"]
    assert writer.healthy


def test_essential_items_go_over_the_bound_rather_than_be_lost(
    db: Database, writer: OrderedWriter[str]
) -> None:
    db.up.clear()
    for n in range(6):
        writer.put(f"s{n}")
    writer.put("p0")  # nothing droppable queued, so the new progress item is the one dropped
    assert writer.pending == 6 and writer.dropped == 1
    db.up.set()
    assert writer.wait(5)
    assert db.rows == [f"s{n}" for n in range(6)]
