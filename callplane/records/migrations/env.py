"""Alembic's entry point for the records' migrations: migrate over the connection it is given.

:func:`callplane.records.migrate.upgrade` opens the connection, takes the lock and the
transaction, and passes the connection in ``config.attributes``; this script only runs the
migrations on it (Alembic sees the transaction is already open and leaves it to the caller).
"""

from __future__ import annotations

from alembic import context

from callplane.records.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run the call records' migrations with callplane.records.migrate.upgrade(engine): "
        "it passes this script the connection to migrate over"
    )
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
