"""A real PostgreSQL server for tests: one per test session, a fresh database per test.

The server is :class:`callplane_dev.postgres.LocalPostgres` (Debian's PostgreSQL, installed by
``scripts/tools/setup_tools.sh postgres``; a missing install fails the test with that hint, no
skips). Use it from a conftest::

    from tests.support.postgres import postgres_server, postgres_url  # fixtures

    def test_something(postgres_url: str) -> None:   # postgresql+psycopg://.../test_<random>
        store = RecordStore(postgres_url)

Its files live in a directory made with :func:`tempfile.mkdtemp` under ``/tmp`` rather than in
pytest's ``tmp_path``: as root, PostgreSQL runs as the ``postgres`` user, which cannot enter
pytest's private base directory.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from callplane_dev.postgres import LocalPostgres

__all__ = ["create_database", "drop_database", "postgres_dir", "postgres_server", "postgres_url"]


def postgres_dir() -> Path:
    """A fresh directory for a :class:`LocalPostgres`, reachable by the ``postgres`` user
    (remove it when done)."""
    base = Path(tempfile.mkdtemp(prefix="callplane-pg-test-"))
    base.chmod(0o755)
    return base


def create_database(server: LocalPostgres) -> str:
    """Create an empty database ``test_<random>`` on ``server``; returns its name."""
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(server: LocalPostgres, name: str) -> None:
    """Drop ``name``, ending any session a test left connected to it."""
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the whole test session, on a free loopback port."""
    base = postgres_dir()
    server = LocalPostgres(base / "server")
    try:
        asyncio.run(server.start())
        yield server
    finally:
        asyncio.run(server.stop())
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> Iterator[str]:
    """The SQLAlchemy URL of a database of this test's own, dropped afterwards."""
    name = create_database(postgres_server)
    try:
        yield postgres_server.url_for(name)
    finally:
        drop_database(postgres_server, name)
