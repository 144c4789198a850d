"""The migrations: shipped inside the package, and creating exactly the tables the code uses."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from unittest.mock import ANY

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import callplane
from callplane.records import CallRecord, RecordStore
from callplane.records.migrate import MIGRATIONS, alembic_config
from callplane.records.schema import metadata
from tests.records.conftest import OpenStore


def test_the_migrations_live_inside_the_callplane_package() -> None:
    package = Path(callplane.__file__).parent
    assert MIGRATIONS.is_relative_to(package)
    assert (MIGRATIONS / "env.py").is_file()
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == "0001"
    assert all(Path(rev.path).is_relative_to(MIGRATIONS) for rev in script.walk_revisions())


def test_the_modal_image_ships_the_migrations() -> None:
    from tests.test_architecture import image_files

    shipped = set(image_files())
    for path in [MIGRATIONS / "env.py", *MIGRATIONS.glob("versions/*.py")]:
        inside = path.relative_to(Path(callplane.__file__).parent.parent)
        assert f"/root/{inside}" in shipped


def test_the_migrated_schema_matches_the_tables(open_store: OpenStore) -> None:
    store = open_store()
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_a_database_from_before_the_migrations_is_converted(tmp_path: Path) -> None:
    """The local stack's SQLite file of earlier versions: one JSON document per call."""
    path = tmp_path / "records.sqlite3"
    record = CallRecord(call_sid="CA7", from_="+15550001111", to="+15550002222", profile="p")
    record.say("agent", "Hello")
    record.tool_started("lookup", "call_1", "{}")
    record.tool_finished("call_1", "found")
    record.key_pressed("3")
    record.close("caller_hung_up")
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE calls (call_sid TEXT PRIMARY KEY, started_at REAL, from_number TEXT, "
            "to_number TEXT, profile TEXT, doc TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?)",
            ("CA7", record.started_at, record.from_, record.to, "p", json.dumps(record.to_json())),
        )
    db.close()

    store = RecordStore(path)
    try:
        assert store.get("CA7") == {**record.to_json(), "status": "ended", "served_by": ANY}
        calls, _ = store.list(number="+15550002222")
        assert [c["call_sid"] for c in calls] == ["CA7"]
    finally:
        store.close()
