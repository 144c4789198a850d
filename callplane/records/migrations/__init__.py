"""Alembic migrations of the call records' database (run by :mod:`callplane.records.migrate`)."""
