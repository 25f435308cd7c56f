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
    merged = dict(pulse.services.ch.rows(
        "SELECT name, extract(create_table_query, 'min_age_to_force_merge_seconds = (\\d+)') FROM system.tables"
        " WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
        " AND name NOT IN ('events', 'schema_migrations', 'person_properties', 'cohort_members')"))
    assert merged == {"type_spans": "60", "page_spans": "60", "session_spans": "60", "actor_hours": "120",
                      "actor_type_hours": "120", "page_hours": "120", "type_hours": "120", "path_hours": "120"}


def test_migration_names_are_checked(tmp_path: Path, scratch_db: Database) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN"):
        migrate_postgres(scratch_db, tmp_path)


REORDER_SCRIPT = r"""
import json, shutil, sys, threading
from pathlib import Path
from pulse.settings import Settings
from pulse.storage.clickhouse import ClickHouse
from pulse.storage.migrations import migrate_clickhouse, migrations_root

state, root = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(migrations_root(), root)
later = sorted(p for p in (root / "clickhouse").glob("*.sql") if p.name >= "0005")
held = root / "held"
held.mkdir()
for path in later:
    path.rename(held / path.name)
ch = ClickHouse(f"chdb://{state}/clickhouse")
settings = Settings(state_dir=state)
before = migrate_clickhouse(ch, settings, root)

INSERT = (
    "INSERT INTO events (project_id, event_id, event_type, user_id, anonymous_id, occurred_at, received_at,"
    " path, country, batch_id) SELECT toUUID('5e0f6c1a-0000-4000-8000-00000000000' || toString(number % 2)),"
    " generateUUIDv4(number), ['page_view', 'click', 'signup'][number % 3 + 1],"
    " if(number % 7 = 0, '', 'u' || toString(cityHash64(number, {seed:UInt64}) % 300)),"
    " if(number % 7 = 0, 'a' || toString(number % 50), ''),"
    " toDateTime64('2026-03-01 00:00:00', 3, 'UTC') + toIntervalSecond(cityHash64(number, {seed:UInt64}) % 5000000),"
    " now64(3), ['/', '/docs', '/pricing'][cityHash64(number, 8) % 3 + 1],"
    " ['DE', 'US', 'UA', ''][cityHash64(number, 9) % 4 + 1], generateUUIDv4()"
    " FROM numbers({n:UInt64})"
)
ch.command(INSERT, {"seed": 0, "n": 20000})
for path in later:
    (held / path.name).rename(path)
inserted = []

def keep_inserting():
    for seed in range(1, 41):
        ch.command(INSERT, {"seed": seed, "n": 500})
        inserted.append(seed)

writer = threading.Thread(target=keep_inserting)
writer.start()
after = migrate_clickhouse(ch, settings, root)
writer.join()

def rows(sql):
    return [list(map(str, r)) for r in ch.rows(sql)]

print(json.dumps({
    "before": before, "after": after, "batches": len(inserted),
    "events": ch.rows("SELECT count() FROM events")[0][0],
    "keys": rows("SELECT name, sorting_key FROM system.tables WHERE database = currentDatabase()"
                 " AND name IN ('actor_type_hours', 'page_hours') ORDER BY name"),
    "tables": rows("SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE '%reordered'"),
    "type_rollup": rows("SELECT project_id, toStartOfHour(hour) AS h, event_type, country, sum(events),"
                        " uniqExact(actor_key) FROM actor_type_hours GROUP BY ALL ORDER BY ALL"),
    "type_events": rows("SELECT project_id, toStartOfHour(occurred_at) AS h, event_type, country, count(),"
                        " uniqExact(actor) FROM events GROUP BY ALL ORDER BY ALL"),
    "page_rollup": rows("SELECT project_id, path, country, sum(views), uniqExact(actor_key) FROM page_hours"
                        " GROUP BY ALL ORDER BY ALL"),
    "page_events": rows("SELECT project_id, path, country, count(), uniqExact(actor) FROM events"
                        " WHERE event_type = 'page_view' GROUP BY ALL ORDER BY ALL"),
}))
ch.close()
"""


def test_country_reorder_keeps_every_rollup_row_while_events_keep_arriving(tmp_path: Path) -> None:
    """0005 swaps actor_type_hours and page_hours for tables ordered by country
    while inserts go on: the rollups still equal the events table, row for row."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", REORDER_SCRIPT, str(tmp_path / "state"), str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2] / "functions")
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "0005_country_order.sql" not in found["before"] and "0005_country_order.sql" in found["after"]
    assert found["batches"] == 40 and found["events"] == 20000 + 40 * 500
    assert found["keys"] == [["actor_type_hours", "project_id, country, hour, event_type, actor_key"],
                             ["page_hours", "project_id, country, hour, path, actor_key"]]
    assert found["tables"] == []
    assert found["type_rollup"] == found["type_events"] and len(found["type_events"]) > 1000
    assert found["page_rollup"] == found["page_events"] and len(found["page_events"]) == 2 * 3 * 4
