"""Alembic's entry point for the records' migrations: migrate over the connection it is given.

:func:`callplane.records.migrate.upgrade` opens the connection, takes the lock and the
transaction, and passes the connection in ``config.attributes``; this script only runs the
migrations on it (Alembic sees the transaction is already open and leaves it to the caller).
Imported any other way (an import check of the package, a tool listing modules) it does
nothing.
"""

from __future__ import annotations

from alembic import context

from callplane.records.schema import metadata


def run_migrations() -> None:
    """Run the pending migrations over the connection the caller passed in."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run the call records' migrations with callplane.records.migrate.upgrade(engine): "
            "it passes this script the connection to migrate over"
        )
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


# Alembic sets up its context (context.config and the rest) only while it runs this script.
if hasattr(context, "config"):
    run_migrations()
