"""Database URLs and engines for the call records: SQLite embedded, PostgreSQL shared.

``sqlite:///path`` keeps the records in one file, for one process (the local stack, a single
container). ``postgresql+psycopg://user@host:port/db`` is for several processes or containers
writing the same records. A plain path (no ``://``) still means a SQLite file, as the records
setting always did, and ``postgres://`` / ``postgresql://`` URLs (as hosting providers hand them
out) get the psycopg 3 driver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

WRITE: Final = "callplane_records_write"
"""Execution option of a connection that writes: on SQLite its transactions take the write lock
up front (``BEGIN IMMEDIATE``), so two processes on one file wait for each other (busy timeout)
instead of failing halfway through a transaction."""

SQLITE_BUSY_TIMEOUT_S: Final = 30.0
POSTGRES_CONNECT_TIMEOUT_S: Final = 10


def database_url(url: str | os.PathLike[str]) -> sa.URL:
    """The SQLAlchemy URL for ``url``: a URL as given, or a file path meaning SQLite."""
    text = os.fspath(url)
    if "://" not in text:
        return sa.URL.create("sqlite", database=str(Path(text).expanduser()))
    parsed = sa.make_url(text)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def describe(url: sa.URL) -> str:
    """``url`` for logs and errors: never its password."""
    return url.render_as_string(hide_password=True)


def make_engine(url: sa.URL) -> Engine:
    """A sync engine for ``url``, set up for the records' write pattern (see the module docs).

    SQLite: the parent directory is created; WAL journal with ``synchronous=NORMAL`` (a crash
    of the process loses nothing committed, a power loss may lose the last commits, and a commit
    costs no fsync). PostgreSQL: connections are checked before use, so a server that restarted
    costs one failed attempt, not a pool of dead connections. Either way, errors and logs never
    show a statement's parameters: they hold what callers said.
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        return sa.create_engine(
            url,
            hide_parameters=True,
            pool_pre_ping=True,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
        )
    raise ValueError(
        f"call records need SQLite or PostgreSQL, not {backend!r} ({describe(url)}); "
        "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
    )


def _sqlite_engine(url: sa.URL) -> Engine:
    if not url.database or url.database == ":memory:":
        raise ValueError(
            "call records need a SQLite file (sqlite:///PATH): an in-memory database is not "
            "shared between the store's writer thread and its readers"
        )
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        hide_parameters=True,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling would BEGIN lazily (and not before DDL);
        # SQLAlchemy's begin event below says BEGIN itself, the way each connection needs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def insert(bind: Engine | Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's own INSERT for ``table``, which has ``on_conflict_do_nothing`` and
    ``on_conflict_do_update`` (SQLite and PostgreSQL spell ON CONFLICT the same way)."""
    if bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached or lost the connection (try
    again later), rather than that it refused the statement (trying again will not help)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def brief(exc: BaseException) -> str:
    """The first line of ``exc`` for a log line: the driver's reason, not the statement."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
