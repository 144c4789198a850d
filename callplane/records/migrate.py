"""Bring a records database to the current schema with Alembic, safely from many replicas.

The migrations ship inside the package (``callplane/records/migrations``), so a deployed image
upgrades its own database at start: no ``alembic.ini``, no separate step. On PostgreSQL, replicas
that start together queue on an advisory lock and the first one migrates; the others find the
schema current. On SQLite the migration's transaction takes the write lock up front, which
serialises processes sharing the file the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

from callplane.records.engine import WRITE

MIGRATIONS: Final = Path(__file__).resolve().with_name("migrations")
"""Alembic's script directory: ``env.py`` and ``versions/``."""

ADVISORY_LOCK: Final = 0x63616C6C_7265636F  # "callreco": the key every replica locks on
"""The PostgreSQL advisory lock key held while migrating."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the records' migrations, without an ini file. With
    ``connection``, ``env.py`` migrates over it (in its transaction)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision``, in one transaction.

    Idempotent: a database already at ``revision`` costs one version lookup. PostgreSQL runs
    the upgrade under ``pg_advisory_xact_lock`` (released at commit, or when a replica dies
    mid-migration), and its DDL is transactional, so a failed upgrade leaves no half schema.
    """
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK)))
            command.upgrade(alembic_config(connection), revision)
