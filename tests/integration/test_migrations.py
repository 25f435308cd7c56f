"""`pulse migrate` semantics against real Postgres and ClickHouse."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from pulse.storage.migrations import MigrationError, migrate_clickhouse, migrate_postgres, migrations_root
from pulse.storage.postgres import Database


@pytest.fixture
def scratch_db(pulse: Any) -> Any:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    pulse.services.db.run(f"CREATE DATABASE {name}")  # a generated identifier, not input
    url = pulse.settings.postgres_url.replace("@/postgres?", f"@/{name}?")
    db = Database(url)
    yield db
    db.close()
    pulse.services.db.run(f"DROP DATABASE {name}")


def test_postgres_migrations_apply_once_in_order_and_refuse_edits(scratch_db: Database, tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(migrations_root(), root)
    applied = migrate_postgres(scratch_db, root)
    assert applied == sorted(p.name for p in (root / "postgres").glob("*.sql"))
    assert migrate_postgres(scratch_db, root) == []
    versions = [r[0] for r in scratch_db.run("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [name[:4] for name in applied]

    (root / "postgres" / "9999_extra.sql").write_text("CREATE TABLE extra (id int);\n")
    assert migrate_postgres(scratch_db, root) == ["9999_extra.sql"]

    first = sorted((root / "postgres").glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate_postgres(scratch_db, root)


def test_clickhouse_migrations_are_idempotent_and_the_ttl_is_configurable(pulse: Any) -> None:
    assert migrate_clickhouse(pulse.services.ch, pulse.settings) == []
    ddl = pulse.services.ch.rows("SELECT create_table_query FROM system.tables WHERE name = 'events'"
                                 " AND database = currentDatabase()")[0][0]
    assert f"toIntervalDay({pulse.settings.events_ttl_days})" in ddl
    assert "PARTITION BY toYYYYMM(occurred_at)" in ddl
    assert "ORDER BY (project_id, toDate(occurred_at)" in ddl


def test_migration_names_are_checked(tmp_path: Path, scratch_db: Database) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN"):
        migrate_postgres(scratch_db, tmp_path)
