"""Forward-only, numbered migrations per store: ``migrations/<store>/NNNN_name.sql``.

Each applied file is recorded with its SHA-256 in that store's
``schema_migrations``; running again applies only what is new, and a file
that changed after it was applied stops the run (``MigrationError``), since
the store no longer matches what the file says.

Statements are separated by a line ending in ``;``. ClickHouse files may use
``{{events_ttl_days}}``, filled from settings when applied. After a ClickHouse
``EXCHANGE TABLES``, the run waits until every INSERT that began before it has
finished: such an insert (and the views it feeds) still writes to the table
that now has the other name, so what the migration does next with that table
(copy its rows, drop it) must not start earlier.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pulse.settings import Settings
from pulse.storage.clickhouse import ClickHouse
from pulse.storage.postgres import Database

NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
EXCHANGE = re.compile(r"^\s*EXCHANGE\s+TABLES\b", re.IGNORECASE)
INSERTS_BEFORE = ("SELECT count() FROM system.processes WHERE query_kind = 'Insert'"
                  " AND elapsed >= {since:Float64}")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def statements(self, values: dict[str, str]) -> list[str]:
        text = self.text
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return split_statements(text)


def migrations_root() -> Path:
    return Path(__file__).resolve().parents[3] / "migrations"


def split_statements(text: str) -> list[str]:
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip().rstrip(";").strip()
            if statement:
                statements.append(statement)
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return statements


def load(store: str, root: Path | None = None) -> list[Migration]:
    folder = (root or migrations_root()) / store
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration names are NNNN_lower_snake.sql")
        found.append(Migration(match.group(1), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a number")
    return found


def _check_applied(store: str, applied: dict[str, tuple[str, str]], migrations: list[Migration]) -> list[Migration]:
    pending = []
    for migration in migrations:
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"{store} migration {migration.name} changed after it was applied "
                    f"(recorded as {name}); add a new migration instead of editing an applied one"
                )
        else:
            pending.append(migration)
    return pending


def migrate_postgres(db: Database, root: Path | None = None) -> list[str]:
    migrations = load("postgres", root)

    def work(conn) -> list[str]:  # type: ignore[no-untyped-def]
        conn.run("SELECT pg_advisory_xact_lock(7461)")
        conn.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r[0]: (r[1], r[2]) for r in conn.run("SELECT version, name, checksum FROM schema_migrations")}
        done = []
        for migration in _check_applied("postgres", applied, migrations):
            for statement in migration.statements({}):
                conn.run(statement)
            conn.run(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                v=migration.version, n=migration.name, c=migration.checksum,
            )
            done.append(migration.name)
        return done

    return db.transaction(work)


def migrate_clickhouse(ch: ClickHouse, settings: Settings, root: Path | None = None) -> list[str]:
    migrations = load("clickhouse", root)
    ch.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, name String, checksum String,"
        " applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    applied = {r[0]: (r[1], r[2]) for r in ch.rows("SELECT version, name, checksum FROM schema_migrations")}
    values = {"events_ttl_days": str(int(settings.events_ttl_days))}
    done = []
    for migration in _check_applied("clickhouse", applied, migrations):
        for statement in migration.statements(values):
            ch.command(statement)
            if EXCHANGE.match(statement):
                _wait_for_inserts_begun_before(ch, time.monotonic())
        ch.command(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ({v:String}, {n:String}, {c:String})",
            parameters={"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        done.append(migration.name)
    return done


def _wait_for_inserts_begun_before(ch: ClickHouse, moment: float, timeout_s: float = 600.0) -> None:
    """Until no INSERT that started before ``moment`` (a ``time.monotonic()``) is running."""
    while ch.rows(INSERTS_BEFORE, {"since": max(0.0, time.monotonic() - moment - 0.05)})[0][0]:
        if time.monotonic() - moment > timeout_s:
            raise MigrationError(f"inserts begun before a table exchange still run after {timeout_s:.0f} s")
        time.sleep(0.05)
