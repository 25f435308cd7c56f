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

On a ClickHouse cluster (``PULSE_CLICKHOUSE_CLUSTER`` names it) the same files
are applied in their cluster form (``ClusterForm``): each table is placed as
``migrations/clickhouse/cluster.toml`` says (sharded: a ``Replicated*``
``<name>_local`` on every shard and a ``Distributed`` ``<name>`` over them;
everywhere: one replicated copy per node under its own name), every DDL
statement runs ``ON CLUSTER``, materialized views read and write the local
tables, and queries keep the names they use on one node.
"""

from __future__ import annotations

import hashlib
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pulse.settings import Settings
from pulse.storage.clickhouse import ClickHouse, Layout
from pulse.storage.postgres import Database

NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
EXCHANGE = re.compile(r"^\s*EXCHANGE\s+TABLES\b", re.IGNORECASE)
INSERTS_BEFORE = ("SELECT count() FROM {processes} WHERE query_kind = 'Insert'"
                  " AND elapsed >= {{since:Float64}}")
SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations (version String, name String, checksum String,"
                " applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version")


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
    layout = ch.layout
    form = ClusterForm(layout, ch.database, placements(root)) if layout.cluster else None

    def render(statement: str) -> list[str]:
        return form.render(statement) if form else [statement]

    for statement in render(SCHEMA_TABLE):
        ch.command(statement)
    # On a cluster, a migration recorded on any replica is applied (replication brings the row to the rest).
    applied = {r[0]: (r[1], r[2]) for r in ch.rows(
        f"SELECT DISTINCT version, name, checksum FROM {layout.on_every_replica('schema_migrations')}")}
    values = {"events_ttl_days": str(int(settings.events_ttl_days))}
    pending = {m.version for m in _check_applied("clickhouse", applied, migrations)}
    processes = INSERTS_BEFORE.format(processes=layout.on_every_replica("system.processes"))
    done = []
    for migration in migrations:
        # Every file is rendered, applied or not: the cluster form follows the tables each one creates.
        statements = [r for s in migration.statements(values) for r in render(s)]
        if migration.version not in pending:
            continue
        for statement in statements:
            ch.command(statement)
            if EXCHANGE.match(statement):
                _wait_for_inserts_begun_before(ch, time.monotonic(), processes)
        ch.command(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ({v:String}, {n:String}, {c:String})",
            parameters={"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        done.append(migration.name)
    return done


def _wait_for_inserts_begun_before(ch: ClickHouse, moment: float, processes: str, timeout_s: float = 600.0) -> None:
    """Until no INSERT that started before ``moment`` (a ``time.monotonic()``) is running."""
    while ch.rows(processes, {"since": max(0.0, time.monotonic() - moment - 0.05)})[0][0]:
        if time.monotonic() - moment > timeout_s:
            raise MigrationError(f"inserts begun before a table exchange still run after {timeout_s:.0f} s")
        time.sleep(0.05)


# The cluster form -----------------------------------------------------------

REPLICA_PATH = "/clickhouse/tables/{uuid}/{shard}"  # one replication group per shard
EVERYWHERE_PATH = "/clickhouse/tables/{uuid}/all"  # one group of every node
PLACEMENTS = "cluster.toml"
_S = re.IGNORECASE | re.DOTALL
CREATE_TABLE = re.compile(r"^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s*(\(.*\))\s*ENGINE\s*=\s*(\w+)"
                          r"(?:\s*\(([^()]*)\))?(.*)$", _S)
CREATE_MV = re.compile(r"^CREATE\s+MATERIALIZED\s+VIEW\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s+TO\s+(\w+)"
                       r"(\s*\([^()]*\))?\s+AS\s+(SELECT\b.*)$", _S)
CREATE_VIEW = re.compile(r"^CREATE\s+VIEW\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s+AS\s+(SELECT\b.*)$", _S)
INSERT_SELECT = re.compile(r"^INSERT\s+INTO\s+(?:TABLE\s+)?(\w+)(\s*\([^()]*\))?\s+(SELECT\b.*)$", _S)
INSERT_VALUES = re.compile(r"^INSERT\s+INTO\s+(?:TABLE\s+)?(\w+)\b.*\b(VALUES|FORMAT)\b", _S)
ALTER = re.compile(r"^ALTER\s+TABLE\s+(\w+)\s+(.*)$", _S)
EXCHANGE_TABLES = re.compile(r"^EXCHANGE\s+TABLES\s+(\w+)\s+AND\s+(\w+)$", _S)
DROP = re.compile(r"^DROP\s+(TABLE|VIEW)\s+(IF\s+EXISTS\s+)?(\w+)(?:\s+SYNC)?$", _S)
OPTIMIZE = re.compile(r"^OPTIMIZE\s+TABLE\s+(\w+)\b(.*)$", _S)
TRUNCATE = re.compile(r"^TRUNCATE\s+TABLE\s+(IF\s+EXISTS\s+)?(\w+)$", _S)
TABLE_REF = re.compile(r"\b(FROM|JOIN)\s+(\w+)\b", re.IGNORECASE)
COLUMN_COMMAND = re.compile(r"^\s*(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    """A table's place on a cluster (``cluster.toml``): sharded by ``shard_by``
    (``key`` names the rows it keeps together), or whole on every node."""

    shard_by: str | None = None
    key: str = "any"
    everywhere: bool = False


def placements(root: Path | None = None) -> dict[str, Placement]:
    path = (root or migrations_root()) / "clickhouse" / PLACEMENTS
    try:
        tables = tomllib.loads(path.read_text()).get("tables", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MigrationError(f"{path}: {exc}") from exc
    out = {}
    for name, entry in tables.items():
        placement = Placement(entry.get("shard_by"), entry.get("key", "any"), bool(entry.get("everywhere", False)))
        if (placement.shard_by is None) == (not placement.everywhere) or set(entry) - {"shard_by", "key", "everywhere"}:
            raise MigrationError(f"{path}: table {name}: give either shard_by (and key) or everywhere = true")
        out[name] = placement
    return out


@dataclass
class ClusterForm:
    """Renders one-node ClickHouse statements for a cluster of shards and
    replicas, following the tables the statements create (feed it every
    migration in order). Each statement becomes one or more, all ``ON CLUSTER``
    except inserts, which go through the Distributed tables:

    - ``CREATE TABLE t ... ENGINE = XMergeTree`` (sharded): ``t_local`` with
      ``ReplicatedXMergeTree`` and ``t`` as ``Distributed`` over it, sharded
      by the table's ``shard_by``; everywhere: ``t`` with one replication group
      of every node (other engines, such as Join, as they are on every node).
    - ``CREATE MATERIALIZED VIEW v TO t AS SELECT ... FROM s``: reads ``s_local``
      and writes ``t_local`` on every node, so each shard's inserts feed its own
      rollups (a replica's view fires for the inserts it takes; replication
      copies the parts).
    - ``INSERT INTO t SELECT ... FROM s``: as is, through the Distributed tables;
      with ``parallel_distributed_insert_select = 2`` (each shard copies its own
      rows) when every source keeps the same rows together as ``t``, and
      without replicated block deduplication (copied rows are no retry).
    - ``ALTER``, ``OPTIMIZE``, ``TRUNCATE``: the local tables; column changes
      the Distributed table too; a view's ``MODIFY QUERY`` reads the local
      tables. ``EXCHANGE TABLES``: the local tables (each Distributed table
      reads its local table by name). ``DROP``: both.

    Anything else has no cluster form and stops the run (``MigrationError``).
    """

    layout: Layout
    database: str
    placements: dict[str, Placement]
    sharded: dict[str, Placement] = field(default_factory=dict)
    everywhere: set[str] = field(default_factory=set)
    views: set[str] = field(default_factory=set)

    @property
    def on(self) -> str:
        return f" ON CLUSTER '{self.layout.cluster}'"

    def render(self, statement: str) -> list[str]:
        text = statement.strip()
        forms = ((CREATE_TABLE, self._create_table), (CREATE_MV, self._create_view), (CREATE_VIEW, self._plain_view),
                 (INSERT_SELECT, self._insert_select), (INSERT_VALUES, lambda m: [text]), (ALTER, self._alter),
                 (EXCHANGE_TABLES, self._exchange), (DROP, self._drop), (OPTIMIZE, self._optimize),
                 (TRUNCATE, self._truncate))
        for pattern, form in forms:
            match = pattern.match(text)
            if match:
                return form(match)
        raise MigrationError(f"no cluster form for this statement: {text[:160]}")

    def _placement(self, table: str) -> Placement:
        if table not in self.placements:
            raise MigrationError(f"table {table} has no place on a cluster: add it to "
                                 f"migrations/clickhouse/{PLACEMENTS}")
        return self.placements[table]

    def _known(self, table: str) -> str:
        """``table``'s own rows on each node."""
        if table in self.sharded:
            return self.layout.local(table)
        if table in self.everywhere:
            return table
        raise MigrationError(f"table {table} is not created by an earlier statement")

    def _create_table(self, m: re.Match[str]) -> list[str]:
        ine, name, columns, engine, args, rest = m.group(1) or "", *m.group(2, 3, 4, 5, 6)
        placement = self._placement(name)
        family = engine.endswith("MergeTree") and not engine.startswith("Replicated")
        if placement.everywhere:
            self.everywhere.add(name)
            if family:
                engine = f"Replicated{engine}('{EVERYWHERE_PATH}', '{{replica}}'{', ' + args if args else ''})"
            else:
                engine = f"{engine}({args})" if args is not None else engine
            return [f"CREATE TABLE {ine}{name}{self.on} {columns}\nENGINE = {engine}{rest}"]
        if not family:
            raise MigrationError(f"table {name}: only MergeTree tables are sharded, not {engine}")
        self.sharded[name] = placement
        local = self.layout.local(name)
        replicated = f"Replicated{engine}('{REPLICA_PATH}', '{{replica}}'{', ' + args if args else ''})"
        return [f"CREATE TABLE {ine}{local}{self.on} {columns}\nENGINE = {replicated}{rest}",
                f"CREATE TABLE {ine}{name}{self.on} AS {local}\nENGINE = Distributed('{self.layout.cluster}',"
                f" '{self.database}', '{local}', {placement.shard_by})"]

    def _locally(self, select: str) -> str:
        return TABLE_REF.sub(lambda r: f"{r.group(1)} {self._known(r.group(2))}" if r.group(2) in self.sharded
                             else r.group(0), select)

    def _create_view(self, m: re.Match[str]) -> list[str]:
        ine, view, target, columns, select = m.group(1) or "", m.group(2), m.group(3), m.group(4) or "", m.group(5)
        sources = [r.group(2) for r in TABLE_REF.finditer(select)]
        if any(s in self.sharded for s in sources) and target not in self.sharded:
            raise MigrationError(f"view {view}: a view over sharded tables writes a sharded table")
        self.views.add(view)
        return [f"CREATE MATERIALIZED VIEW {ine}{view}{self.on} TO {self._known(target)}{columns} AS\n"
                f"{self._locally(select)}"]

    def _plain_view(self, m: re.Match[str]) -> list[str]:
        self.views.add(m.group(2))
        return [f"CREATE VIEW {m.group(1) or ''}{m.group(2)}{self.on} AS\n{m.group(3)}"]

    def _insert_select(self, m: re.Match[str]) -> list[str]:
        target, select = m.group(1), m.group(3)
        self._known(target)
        sources = [r.group(2) for r in TABLE_REF.finditer(select)]
        place = self.sharded.get(target)
        per_shard = (place is not None and bool(sources) and all(s in self.sharded for s in sources)
                     and all(place.key == "any" or self.sharded[s].key == place.key for s in sources))
        if re.search(r"\bSETTINGS\b", select, re.IGNORECASE):
            raise MigrationError(f"insert into {target}: SETTINGS in a migration's INSERT ... SELECT")
        # Replicated tables drop a block equal to a recent one (a retried insert); rows a
        # migration copies are not retries, however alike two blocks of them are.
        settings = ["parallel_distributed_insert_select = 2"] if per_shard else []
        return [m.group(0) + "\nSETTINGS " + ", ".join([*settings, "insert_deduplicate = 0"])]

    def _alter(self, m: re.Match[str]) -> list[str]:
        table, commands = m.group(1), m.group(2)
        if table in self.views:
            query = re.match(r"\s*MODIFY\s+QUERY\s+(.*)", commands, re.IGNORECASE | re.DOTALL)
            if query is None:
                raise MigrationError(f"alter view {table}: only MODIFY QUERY has a cluster form")
            # the view reads each node's local tables, as when it was created
            return [f"ALTER TABLE {table}{self.on} MODIFY QUERY\n{self._locally(query.group(1))}"]
        local = f"ALTER TABLE {self._known(table)}{self.on} {commands}"
        if table not in self.sharded:
            return [local]
        columns = [c for c in _top_level(commands) if COLUMN_COMMAND.match(c)]
        if not columns:
            return [local]
        if len(columns) != len(_top_level(commands)):
            raise MigrationError(f"alter {table}: column changes and other commands in separate statements")
        distributed = f"ALTER TABLE {table}{self.on} {commands}"
        dropping = any(re.match(r"\s*DROP\b", c, re.IGNORECASE) for c in columns)
        return [distributed, local] if dropping else [local, distributed]

    def _exchange(self, m: re.Match[str]) -> list[str]:
        a, b = m.group(1), m.group(2)
        if (a in self.sharded) != (b in self.sharded) or self.sharded.get(a) != self.sharded.get(b):
            raise MigrationError(f"exchange {a} and {b}: the two tables are placed differently")
        return [f"EXCHANGE TABLES {self._known(a)} AND {self._known(b)}{self.on}"]

    def _drop(self, m: re.Match[str]) -> list[str]:
        kind, ie, name = m.group(1).upper(), m.group(2) or "", m.group(3)
        if kind == "VIEW":
            self.views.discard(name)
            return [f"DROP VIEW {ie}{name}{self.on} SYNC"]
        if name not in self.sharded and name not in self.everywhere:
            if not ie:
                raise MigrationError(f"table {name} is not created by an earlier statement")
            if self._placement(name).everywhere:
                return [f"DROP TABLE {ie}{name}{self.on} SYNC"]
            return [f"DROP TABLE {ie}{name}{self.on} SYNC", f"DROP TABLE {ie}{self.layout.local(name)}{self.on} SYNC"]
        if self.sharded.pop(name, None) is None:
            self.everywhere.discard(name)
            return [f"DROP TABLE {ie}{name}{self.on} SYNC"]
        return [f"DROP TABLE {ie}{name}{self.on} SYNC", f"DROP TABLE {ie}{self.layout.local(name)}{self.on} SYNC"]

    def _optimize(self, m: re.Match[str]) -> list[str]:
        return [f"OPTIMIZE TABLE {self._known(m.group(1))}{self.on}{m.group(2)}"]

    def _truncate(self, m: re.Match[str]) -> list[str]:
        return [f"TRUNCATE TABLE {m.group(1) or ''}{self._known(m.group(2))}{self.on}"]


def _top_level(commands: str) -> list[str]:
    """An ALTER's commands: split at commas outside parentheses and quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for char in commands:
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def cluster_statements(layout: Layout, database: str, settings: Settings,
                       root: Path | None = None) -> list[tuple[Migration, list[str]]]:
    """Every ClickHouse migration in its cluster form, in order (what
    ``migrate_clickhouse`` applies on that cluster), the migrations table first."""
    form = ClusterForm(layout, database, placements(root))
    values = {"events_ttl_days": str(int(settings.events_ttl_days))}
    schema = Migration("0000", "schema_migrations", SCHEMA_TABLE)
    return [(schema, form.render(SCHEMA_TABLE))] + [
        (m, [r for s in m.statements(values) for r in form.render(s)]) for m in load("clickhouse", root)]
