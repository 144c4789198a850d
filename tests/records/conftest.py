"""The call records' tests run against SQLite and a real PostgreSQL server alike."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from callplane.records import RecordStore
from tests.support.postgres import postgres_server, postgres_url

__all__ = ["db_url", "open_store", "postgres_server", "postgres_url"]

OpenStore = Callable[..., RecordStore]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty records database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def open_store(db_url: str) -> Iterator[OpenStore]:
    """``open_store(**options)``: a RecordStore on ``db_url`` (as another container would open
    it), closed after the test."""
    opened: list[RecordStore] = []

    def open_(url: str = db_url, **options: Any) -> RecordStore:
        store = RecordStore(url, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close(timeout_s=2)
