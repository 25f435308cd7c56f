"""A two-shard stand-in for a ClickHouse cluster inside one chDB engine, and
Pulse's migrations and queries run on it beside the one-node form.

chDB runs no server, so no ``remote_servers`` cluster is reachable from it;
what it does run is ``remote('localhost,127.0.0.1', db, table, key)``: a
Distributed storage of two shards, both local, that executes queries the
distributed way (each shard's partial aggregate, merged on the initiator)
and splits inserts by the sharding key. Both shards read the same physical
``<table>_local``, so each ``_local`` table gets a row policy keeping on each
shard exactly the rows the sharding key sends there (``key % 2 =
shardNum() - 1``; tables sharded by ``rand()`` show all their rows on shard 1):
each shard then holds its own rows, disjoint, as on a real cluster. (A
materialized view reads the block inserted into a local table outside any
shard, shardNum() = 0, and sees all of it, as on a real node.)

The cluster DDL is the one ``migrate_clickhouse`` renders for a real cluster
(``ClusterForm``); ``StandIn.command`` turns each statement into its stand-in:
no ``ON CLUSTER``, ``ReplicatedXMergeTree(path, replica, ...)`` as
``XMergeTree(...)``, a ``Distributed(cluster, db, local, key)`` table as a
table over ``remote(...)`` with the same key (re-created after column changes,
since such a table keeps the columns it was created with).

Identity (pulse.core.persons) runs through Pulse's own write path on both
forms, each with its own Postgres database (the truth): links in batches, a
chain, a forced merge and a refused one, person properties, then a person
deleted (pulse.core.erasure) and a project's old events expired, then the
links rewritten from Postgres. Both shards of the stand-in are one engine, so
they share each table, the Join table ``person_links`` too: what the stand-in
shows of the writes that must reach every node is that the cluster form sends
one to each node (``insert_shard_id`` 1 and 2 of the every-node expression),
that deletions take the cluster forms of their statements, that every answer
then equals the one-node form's, and that a node that does not answer stops
the write (``Unavailable``) until a redelivery rewrites it. That each real
node's own copy receives its write is left to a live cluster.

Run as its own process (one chDB engine per process):
``python cluster_standin.py STATE_DIR`` prints one JSON line.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.sax.saxutils import escape

import chdb
import orjson

from pulse.core import breakdowns, cohorts, erasure, funnel, lifecycle, paths, persons, retention, stats, stickiness
from pulse.core.filters import Filters, parse_segments
from pulse.core.persisting import INSERT_COLUMNS, Persister
from pulse.errors import NotFound, Unavailable
from pulse.local.embedded import Postgres
from pulse.settings import Settings
from pulse.storage import persons as person_store
from pulse.storage.clickhouse import ClickHouse, Layout
from pulse.storage.migrations import cluster_statements, migrate_clickhouse, migrate_postgres, migrations_root
from pulse.storage.postgres import Database

SHARDS = "localhost,127.0.0.1"
STANDIN = Layout("pulse", every_replica=f"remote('{SHARDS}', {{table}})")
DISTRIBUTED = re.compile(r"^CREATE TABLE (IF NOT EXISTS )?(\w+) AS (\w+)\nENGINE = Distributed\('[^']*', '([^']*)',"
                         r" '(\w+)', (.*)\)$", re.S)
REPLICATED = re.compile(r"Replicated(\w*MergeTree)\('[^']*', '\{replica\}'(?:, )?")
ALTER = re.compile(r"^ALTER TABLE (\w+) ")
# What the cluster form sends: a write to the table of each node, and the target of each deletion.
LINK_WRITE = re.compile(r"^INSERT INTO FUNCTION (remote\('[^']*', currentDatabase\(\), person_links\)) \(link_key,"
                        r" project_id, actor_key, person_key\) SETTINGS insert_shard_id = (\d+) ")
ALTERED = re.compile(r"^ALTER TABLE (\w+(?: ON CLUSTER '\w+')?) DELETE ")
DROP = re.compile(r"^DROP TABLE (IF EXISTS )?(\w+) SYNC$")


def shard_keys(settings: Settings) -> dict[str, str]:
    """Each local table of the cluster form -> its Distributed table's sharding key."""
    keys = {}
    for _, statements in cluster_statements(STANDIN, "two", settings):
        for statement in statements:
            match = DISTRIBUTED.match(statement.replace(f" ON CLUSTER '{STANDIN.cluster}'", ""))
            if match:
                keys[match.group(5)] = match.group(6)
    return keys


def shard_filter(key: str) -> str:
    return "shardNum() = 1" if key == "rand()" else f"({key}) % 2 = shardNum() - 1"


def row_policies(keys: dict[str, str]) -> str:
    """Outside a shard's part of a distributed query (shardNum() = 0: a view reading
    the block just inserted into a local table) every row is seen."""
    filters = "".join(
        f"<{local}><filter>{escape(f'shardNum() = 0 OR {shard_filter(key)}')}"
        f"</filter></{local}>" for local, key in sorted(keys.items()))
    return ("<clickhouse><users><default><password></password><networks><ip>::/0</ip></networks>"
            "<profile>default</profile><quota>default</quota><access_management>1</access_management>"
            f"<databases><two>{filters}</two></databases></default></users>"
            "<profiles><default/></profiles><quotas><default/></quotas></clickhouse>")


class StandIn(ClickHouse):
    """Pulse's ClickHouse client on database ``two``, running cluster DDL in its stand-in form."""

    def __init__(self, url: str, layout: Layout = STANDIN) -> None:
        super().__init__(url, layout=layout)
        self.distributed: dict[str, str] = {}
        self.ddl: list[str] = []

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        self.ddl.append(sql)
        for statement in self.stand_in(sql):
            super().command(statement, parameters)

    def stand_in(self, sql: str) -> list[str]:
        sql = REPLICATED.sub(r"\1(", sql.replace(f" ON CLUSTER '{STANDIN.cluster}'", ""))
        match = DISTRIBUTED.match(sql)
        if match:
            ine, name, _, db, local, key = match.groups()
            self.distributed[name] = f"remote('{SHARDS}', '{db}', '{local}', {key})"
            return [f"CREATE TABLE {ine or ''}{name} AS {self.distributed[name]}"]
        match = ALTER.match(sql)
        if match and match.group(1) in self.distributed:
            name = match.group(1)
            return [f"DROP TABLE {name}", f"CREATE TABLE {name} AS {self.distributed[name]}"]
        match = DROP.match(sql)
        if match:
            self.distributed.pop(match.group(2), None)
        return [sql]


def make_events(seed: int, n: int, projects: list[str], start: datetime) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        user = rng.randrange(400)
        anonymous = rng.random() < 0.15
        moment = start + timedelta(seconds=rng.randrange(70 * 86400))
        kind = rng.choices(["page_view", "click", "signup", "purchase"], [6, 3, 1, 1])[0]
        out.append({
            "project_id": projects[user % 2], "batch_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "received_at": moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "event_type": kind,
            "user_id": "" if anonymous else f"u{user}", "anonymous_id": f"a{user}" if anonymous else "",
            "session_id": f"s{user}-{moment.timetuple().tm_yday}" if rng.random() < 0.8 else "",
            "occurred_at": moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "properties": orjson.dumps({"plan": rng.choice(["free", "pro", "team"])}).decode(),
            "path": rng.choice(["/", "/docs", "/pricing", "/blog"]) if kind == "page_view" else "",
            "url": "", "referrer": "", "title": "", "user_agent": "", "ip": "", "locale": "en",
            "country": rng.choice(["DE", "US", "UA", "FR", ""]), "bot": int(rng.random() < 0.05),
        })
    return out


def insert(chs: list[ClickHouse], rows: list[dict[str, Any]], columns: tuple[str, ...] = INSERT_COLUMNS) -> None:
    for start in range(0, len(rows), 2000):
        body = b"\n".join(orjson.dumps({c: r[c] for c in columns}) for r in rows[start:start + 2000])
        for ch in chs:
            ch.insert_json_rows("events", columns, body)


def answers(ch: ClickHouse, projects: list[str], last: datetime, only: str = "") -> dict[str, Any]:
    """Every stats kernel aggregate serves, over several ranges and segments
    (``only``: the one range of that name)."""
    out: dict[str, Any] = {}
    first = datetime(2026, 3, 1, tzinfo=UTC)
    ranges = {
        "whole": (first, last + timedelta(days=1), "UTC"),  # whole hours, up to after the last event: spans
        "berlin": (datetime(2026, 3, 20, 23, tzinfo=UTC), datetime(2026, 4, 20, 22, tzinfo=UTC), "Europe/Berlin"),
        "minutes": (datetime(2026, 3, 10, 12, 30, tzinfo=UTC), datetime(2026, 4, 2, 7, 15, tzinfo=UTC), "UTC"),
        "kolkata": (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC), "Asia/Kolkata"),
    }
    segments = {"all": (), "de": parse_segments(["country:DE"]), "docs": parse_segments(["path:/docs"])}
    for index, project in enumerate(projects):
        for rname, (start, end, tz) in ranges.items():
            if only and rname != only:
                continue
            for sname, segment in segments.items():
                f = Filters(project, start, end, tz, segment)
                key = f"p{index}/{rname}/{sname}"
                for rollups in (True, False):
                    k = f"{key}/{'rollups' if rollups else 'events'}"
                    for group in ("day", "week", "hour", "event_type", "properties.plan"):
                        out[f"events/{group}/{k}"] = stats.events(ch, f, group, rollups)
                    out[f"active/week/{k}"] = stats.active_users(ch, f, "week", rollups)
                    out[f"dau/{k}"] = stats.dau(ch, f, rollups)
                    out[f"top/{k}"] = stats.top_events(ch, f, 10, rollups)
                    out[f"pages/{k}"] = stats.pages(ch, f, 3, rollups)
                    spec = retention.Retention(date(2026, 3, 2), 6)
                    out[f"retention/{k}"] = retention.retention(ch, f, spec, date(2026, 6, 1), rollups)
                out[f"overview/{key}"] = stats.overview(ch, f)
                with_bots = replace(f, include_bots=True)
                out[f"overview/bots/{key}"] = stats.overview(ch, with_bots)
                out[f"events/day/bots/{key}"] = stats.events(ch, with_bots, "day")
                steps = (funnel.Step("page_view", ()), funnel.Step("click", ()), funnel.Step("purchase", segment))
                out[f"funnel/{key}"] = funnel.funnel(ch, funnel.Funnel(steps, 7 * 86400, f))
                out[f"summary/{key}"] = stats.summary(ch, f, now=last - timedelta(hours=7))
                out[f"user/{key}"] = stats.user(ch, Filters(project, first, end, "UTC"), "u2" if project == projects[0]
                                                 else "u3")
    return out


def by_person(ch: ClickHouse, project: str, last: datetime) -> dict[str, Any]:
    """Figures of the first project over person properties (person.plan) and of single
    persons: a chain's, a forced merge's, and the person deleted later."""
    out: dict[str, Any] = {}
    start, end = datetime(2026, 3, 1, tzinfo=UTC), last + timedelta(days=1)
    for sname, segment in (("pro", parse_segments(["person.plan:pro"])), ("first", parse_segments(["person.first:2"]))):
        f = Filters(project, start, end, "UTC", segment)
        for rollups in (True, False):
            k = f"{sname}/{'rollups' if rollups else 'events'}"
            out[f"dau/{k}"] = stats.dau(ch, f, rollups)
            out[f"active/{k}"] = stats.active_users(ch, f, "week", rollups)
            out[f"retention/{k}"] = retention.retention(ch, f, retention.Retention(date(2026, 3, 2), 6),
                                                        date(2026, 6, 1), rollups)
        out[f"overview/{sname}"] = stats.overview(ch, f)
        steps = (funnel.Step("page_view", ()), funnel.Step("click", ()), funnel.Step("purchase", ()))
        out[f"funnel/{sname}"] = funnel.funnel(ch, funnel.Funnel(steps, 7 * 86400, f))
    for identifier in ("u14", "a6", "u0", "u2", "u64", "u66", "u100"):
        try:
            out[f"user/{identifier}"] = stats.user(ch, Filters(project, start, end, "UTC"), identifier)
        except NotFound as exc:  # the person deleted
            out[f"user/{identifier}"] = str(exc)
    return out


COHORT = str(uuid.UUID(int=9, version=4))
PROJECTS = (str(uuid.UUID(int=7, version=4)), str(uuid.UUID(int=8, version=4)))


def insights(ch: ClickHouse, projects: list[str], last: datetime) -> dict[str, Any]:
    """The insight kernels (breakdowns, funnel orders and people, paths, stickiness,
    lifecycle, cohorts as filters); the first project's persons have identifiers on both shards."""
    out: dict[str, Any] = {}
    start, end = datetime(2026, 3, 1, tzinfo=UTC), last + timedelta(days=1)
    country, plan = breakdowns.make(["country"], 2), breakdowns.make(["properties.plan", "event_type"], 3)
    for project in projects:
        ch.command(*cohorts.members_from_ids(project, COHORT, [f"u{n}" for n in range(0, 400, 3)]))
        doers = cohorts.BehaviouralCohort(cohorts.Behaviour("purchase", 2, 40), last)
        for cname, cohort in (("all", None), ("static", cohorts.StaticCohort(COHORT)), ("doers", doers)):
            for sname, segment in (("all", ()), ("de", parse_segments(["country:DE"])))[:2 if cohort is None else 1]:
                f = Filters(project, start, end, "Europe/Berlin", segment, cohort=cohort)
                key = f"{project[:4]}/{cname}/{sname}"
                for rollups in (True, False):
                    k = f"{key}/{'rollups' if rollups else 'events'}"
                    out[f"events/{k}"] = stats.events(ch, f, "week", rollups, country)
                    out[f"active/{k}"] = stats.active_users(ch, f, "month", rollups, bd=plan)
                    out[f"top/{k}"] = stats.top_events(ch, f, 3, rollups, country)
                    out[f"stickiness/{k}"] = stickiness.stickiness(ch, f, "week", rollups)
                    out[f"lifecycle/{k}"] = lifecycle.lifecycle(ch, f, "week", rollups)
                out[f"retention/{key}"] = retention.retention(ch, f, retention.Retention(date(2026, 3, 2), 6),
                                                              date(2026, 6, 1), bd=plan)
                steps = (funnel.Step("page_view", ()), funnel.Step("click", ()), funnel.Step("purchase", ()))
                for order in funnel.ORDERS:
                    spec = funnel.Funnel(steps, 3 * 86400, f, order, (funnel.Exclusion("signup", 1, 2),), country)
                    out[f"funnel/{order}/{key}"] = funnel.funnel(ch, spec)
                    people = funnel.people(ch, funnel.People(spec, 2, "converted", limit=1000))
                    out[f"people/{order}/{key}"] = sorted([str(p), sorted(a)] for p, a in people)
                for anchor, forward in (("signup", True), ("purchase", False)):
                    spec_p = paths.Paths(f, anchor, forward, 3, 2, pages=True)
                    out[f"paths/{anchor}/{key}"] = paths.paths(ch, spec_p)
    return out


# Identity for the first project (its users are the even ones; a<n> is the anonymous id of u<n>), in
# batches as persist applies them (pulse.storage.persons.PersonStore), so that identifiers on both shards
# are one person: a<n> -> u<n>; chains a6 -> u6, u6 -> u14, a14 -> u14 (one person of four); forced merges
# of two identified persons (the absorbed one's links rewritten); one refused merge.
LINKED = [n for n in range(0, 400, 2) if n % 8 != 6]
CHAINED = [n for n in range(0, 400, 2) if n % 8 == 6][::2]  # 6, 22, 38, ...: each with n + 8
FORCED = [(n, n + 2) for n in (0, 16, 32, 48)]
REFUSED = ("u100", "u104")
DOWN = ("u64", "u66")  # a forced merge written while a node does not answer


def identity_batches() -> list[list[persons.Operation]]:
    batches: list[list[persons.Operation]] = []
    for start in range(0, len(LINKED), 50):
        ops: list[persons.Operation] = []
        for n in LINKED[start:start + 50]:
            ops += [persons.Link(f"a{n}", f"u{n}"), persons.Identify(f"u{n}"),
                    persons.SetProperties(f"u{n}", {"plan": "pro" if n % 3 == 0 else "free"}, {"first": n})]
        batches.append(ops)
    batches.append([op for n in CHAINED for op in (persons.Link(f"a{n}", f"u{n}"), persons.Identify(f"u{n}"))])
    batches.append([persons.Link(f"u{n}", f"u{n + 8}") for n in CHAINED])
    batches.append([persons.Link(f"a{n + 8}", f"u{n + 8}") for n in CHAINED])
    batches.append([persons.Link(f"u{a}", f"u{b}", force=True) for a, b in FORCED] + [persons.Link(*REFUSED)])
    return batches


def links(ch: ClickHouse) -> list[list[str]]:
    return sorted([list(map(str, r)) for r in ch.rows("SELECT project_id, actor_key, person_key FROM person_links")])


# Every row of a person's identifiers, in every table that keys rows by them.
LEFT_OF = " UNION ALL ".join(f"SELECT '{t}', count() FROM {t} WHERE has({{keys:Array(UInt128)}}, {c})" for t, c in (
    ("events", "actor_key"), ("actor_hours", "actor_key"), ("actor_type_hours", "actor_key"),
    ("page_hours", "actor_key"), ("type_spans", "actor_key"), ("page_spans", "actor_key"),
    ("person_links", "actor_key"), ("person_links", "person_key"), ("person_properties", "person_key")))


def scratch_postgres(admin: Database, url: str, name: str, projects: list[str]) -> Database:
    admin.run(f"CREATE DATABASE {name}")  # a fixed name, not input
    db = Database(url.replace("@/postgres?", f"@/{name}?"))
    migrate_postgres(db)
    for project in projects:
        db.run("INSERT INTO projects (project_id, name) VALUES (CAST(:p AS uuid), :p)", p=project)
    return db


def identity(forms: dict[str, tuple[ClickHouse, Database]], project: str, down: StandIn) -> dict[str, Any]:
    """Pulse's identity writes on both forms; returns what the cluster form sent and what failed."""
    for index, ops in enumerate(identity_batches()):
        batch = str(uuid.UUID(int=1000 + index, version=4))
        for ch, db in forms.values():
            person_store.PersonStore(db, ch).apply(project, batch, ops)
    # A node that does not answer: the batch's Postgres transaction commits, its ClickHouse writes fail
    # (persist answers 503); the redelivery, with every node back, rewrites the persons from Postgres.
    batch, ops = str(uuid.UUID(int=2000, version=4)), [persons.Link(*DOWN, force=True)]
    failed = ""
    try:
        person_store.PersonStore(forms["two"][1], down).apply(project, batch, ops)
    except Unavailable as exc:
        failed = f"{exc} ({type(exc.__cause__).__name__})"
    missing = person_store.person_of(forms["two"][1], project, DOWN[0]).primary
    for ch, db in forms.values():
        person_store.PersonStore(db, ch).apply(project, batch, ops)
    return {"down": failed, "down_primary": missing}


def erase(forms: dict[str, tuple[ClickHouse, Database]], projects: list[str]) -> dict[str, Any]:
    """A person with identifiers on both shards deleted on request, and the second project's
    events before 2026-03-21 expired, on both forms."""
    out: dict[str, Any] = {"deleted": {}, "left": {}, "expired": {}}
    for name, (ch, db) in forms.items():
        person = person_store.person_of(db, projects[0], "u6")
        deletion = erasure.Deletions(db).create(projects[0], person.person_id, sorted(person.members), "test", False)
        erasure.run_deletion(db, ch, projects[0], deletion)
        out["deleted"][name] = [sorted(person.members), erasure.Deletions(db).get(projects[0], deletion).events_deleted]
        keys = [r[0] for r in ch.rows(f"SELECT {persons.KEY_OF.format('x')} FROM (SELECT arrayJoin({{ids:Array(String)}})"
                                      " AS x)", {"ids": sorted(person.members)})]
        out["left"][name] = sorted(ch.rows(LEFT_OF, {"keys": keys}))
        out["expired"][name] = erasure.expire(db, ch, projects[1], 30, now=datetime(2026, 4, 20, 6, tzinfo=UTC))
    return out
ROLLUPS = {  # every rollup as rows, straight from the tables the queries read
    "actor_hours": "SELECT project_id, hour, country, actor_key, sum(events) FROM actor_hours GROUP BY ALL",
    "actor_type_hours": "SELECT project_id, hour, event_type, country, actor_key, sum(events) FROM actor_type_hours"
                        " GROUP BY ALL",
    "page_hours": "SELECT project_id, hour, path, country, actor_key, sum(views) FROM page_hours GROUP BY ALL",
    "type_hours": "SELECT project_id, hour, event_type, sum(events) FROM type_hours GROUP BY ALL",
    "path_hours": "SELECT project_id, hour, path, sum(views) FROM path_hours GROUP BY ALL",
    "type_spans": "SELECT project_id, event_type, actor_key, min(first_at), max(last_at) FROM type_spans GROUP BY ALL",
    "page_spans": "SELECT project_id, path, actor_key, min(first_at), max(last_at) FROM page_spans GROUP BY ALL",
}
# The span tables read with FINAL (one row per user and type) and counted.
SPANS_FINAL = ("SELECT project_id, event_type, count(), uniqExact(actor_key) FROM type_spans FINAL"
               " GROUP BY ALL ORDER BY ALL")
# Users whose rows are on more than one shard, across every table keyed by user
# (FINAL over the span tables is exact on a cluster only if there are none). In
# the stand-in FINAL itself merges a table's rows before the row policies
# place them, so placement is checked here, through each table's _shard_num.
SPLIT_USERS = ("SELECT count() FROM (SELECT actor_key FROM ("
               + " UNION ALL ".join(f"SELECT actor_key, _shard_num AS s FROM {table}" for table in (
                   "events", "actor_hours", "actor_type_hours", "page_hours", "type_spans", "page_spans"))
               + ") GROUP BY actor_key HAVING uniqExact(s) > 1)")

def main(state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    settings = Settings(state_dir=state)
    (state / "users.xml").write_text(row_policies(shard_keys(settings)))
    (state / "config.xml").write_text("<clickhouse><user_directories><users_xml><path>"
                                      f"{state / 'users.xml'}</path></users_xml></user_directories></clickhouse>")
    engine = chdb.connect(f"{state / 'ch'}?config-file={state / 'config.xml'}")
    setup = ClickHouse(f"chdb://{state / 'ch'}")
    for db in ("one", "two"):
        setup.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    one = ClickHouse(f"chdb://{state / 'ch'}?database=one")
    two = StandIn(f"chdb://{state / 'ch'}?database=two")

    root = state / "migrations"
    shutil.copytree(migrations_root(), root)
    held = state / "held"
    held.mkdir()
    for path in (root / "clickhouse").glob("*.sql"):
        if path.name >= "0003":
            path.rename(held / path.name)
    first = {"one": migrate_clickhouse(one, settings, root), "two": migrate_clickhouse(two, settings, root)}
    projects = list(PROJECTS)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    early = make_events(1, 8000, projects, start)
    for row in early:
        row["bot"] = 0  # no event was marked before the column existed (0021)
    # before the rollups exist (their migrations backfill these) and before events had a bot column
    insert([one, two], early, tuple(c for c in INSERT_COLUMNS if c != "bot"))
    for path in held.iterdir():
        path.rename(root / "clickhouse" / path.name)
    later = {"one": migrate_clickhouse(one, settings, root), "two": migrate_clickhouse(two, settings, root)}
    late = make_events(2, 8000, projects, start)
    insert([one, two], late)  # through the views
    # Identity for the first project: its figures count persons, whose identifiers' rows sit on
    # different shards; the second project's count identifiers. Then events of linked identifiers
    # arrive after their links.
    postgres = Postgres.start(state / "postgres")
    admin = Database(postgres.url)
    forms = {"one": (one, scratch_postgres(admin, postgres.url, "one", projects)),
             "two": (two, scratch_postgres(admin, postgres.url, "two", projects))}
    down = StandIn(f"chdb://{state / 'ch'}?database=two",
                   Layout("pulse", every_replica=f"remote('{SHARDS},localhost:1', {{table}})"))
    written = identity(forms, projects[0], down)
    after_links = make_events(3, 2000, projects, start)
    insert([one, two], after_links)
    last = max(datetime.fromisoformat(r["occurred_at"]).replace(tzinfo=UTC) for r in early + late + after_links)

    def rows(ch: ClickHouse, sql: str) -> list[list[str]]:
        return sorted([list(map(str, r)) for r in ch.rows(sql)])

    # The real cluster form, as migrate_clickhouse applies it on cluster "events", parsed by the engine.
    rendered = [s for _, statements in cluster_statements(Layout("events"), "pulse", settings) for s in statements]
    unparsed = []
    for statement in rendered:
        try:
            setup.rows(f"EXPLAIN AST {statement}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            unparsed.append(f"{statement[:200]}: {exc}")
    batch = early[0]["batch_id"]
    stored = {name: sorted(Persister._stored_by_batch(SimpleNamespace(ch=ch), early[0]["project_id"], batch))
              for name, ch in (("one", one), ("two", two))}
    figures = {
        "answers": [json.loads(json.dumps(answers(ch, projects, last), default=str)) for ch in (one, two)],
        "persons": [json.loads(json.dumps(by_person(ch, projects[0], last), default=str)) for ch in (one, two)],
        "insights": [json.loads(json.dumps(insights(ch, projects, last), default=str)) for ch in (one, two)],
    }
    linked = [links(one), links(two)]
    counted = {n: rows(ch, "SELECT count(), uniqExact(event_id) FROM events") for n, ch in (("one", one), ("two", two))}
    mark = len(two.ddl)
    erased = erase(forms, projects)
    deletion_ddl = two.ddl[mark:]
    after = [json.loads(json.dumps({**answers(ch, projects, last, only="whole"), **by_person(ch, projects[0], last)},
                                   default=str)) for ch in (one, two)]
    linked_after = [links(one), links(two)]
    rewritten = {name: person_store.resync_links(db, ch) for name, (ch, db) in forms.items()}
    differ = person_store.links_differ(two)  # every node's links, compared (the stand-in's nodes share them)
    print(json.dumps({
        "applied": {"first": first, "later": later, "again": migrate_clickhouse(two, settings, root)},
        "ddl": two.ddl, "parsed": len(rendered), "unparsed": unparsed,
        "tables": rows(two, "SELECT name, engine, sorting_key FROM system.tables WHERE database = 'two'"),
        "shards": rows(two, "SELECT _shard_num, count() FROM events GROUP BY 1"),
        "events": counted,
        "events_after": {n: rows(ch, "SELECT count(), uniqExact(event_id) FROM events") for n, ch in (("one", one),
                                                                                                   ("two", two))},
        "identity": {**written, "links": linked, "links_after": linked_after, "rewritten": rewritten,
                     "links_rewritten": [links(one), links(two)], "nodes": two.nodes(), "differ": differ,
                     "link_writes": [LINK_WRITE.findall(s) for s in two.ddl if "person_links" in s and "INSERT" in s],
                     "property_writes": [s for s in two.ddl if s.startswith("INSERT INTO person_properties")][:1],
                     "deletion_ddl": sorted({m.group(1) for s in deletion_ddl if (m := ALTERED.match(s))}),
                     **erased, "after": after},
        "rollups": {t: [rows(one, sql), rows(two, sql)] for t, sql in ROLLUPS.items()},
        "spans_final": [rows(one, SPANS_FINAL), rows(two, SPANS_FINAL)],
        "split_users": two.rows(SPLIT_USERS)[0][0],
        "users_per_shard": rows(two, "SELECT _shard_num, uniqExact(actor_key) FROM events GROUP BY 1"),
        "stored": stored, "batch_events": sum(1 for r in early if r["batch_id"] == batch),
        **figures,
    }))
    for ch in (one, two, setup, down):
        ch.close()
    for _, db in forms.values():
        db.close()
    admin.close()
    postgres.stop()
    engine.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
