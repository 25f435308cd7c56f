"""Persons in Postgres (the truth) and their ClickHouse side (overrides and
properties), written as pulse.core.persons describes: apply a batch's identity
operations once, then rewrite the ClickHouse rows of every person the batch
touched, all under the project's identity lock."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import Any

import orjson

from pulse import telemetry
from pulse.core import persons
from pulse.core.persons import Identities, Operation, Outcome, Person
from pulse.errors import NotFound
from pulse.storage.clickhouse import ClickHouse
from pulse.storage.postgres import Connection, Database, in_transaction

LOCK = "SELECT pg_advisory_lock(hashtextextended(:k, 0))"
UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(:k, 0))"
LOAD = (
    "SELECT p.person_id::text, p.primary_id, p.identified, p.properties::text, array_agg(m.distinct_id)"
    " FROM persons p JOIN person_ids m ON m.project_id = p.project_id AND m.person_id = p.person_id"
    " WHERE p.project_id = CAST(:p AS uuid) AND p.person_id IN (SELECT person_id FROM person_ids"
    " WHERE project_id = CAST(:p AS uuid) AND distinct_id = ANY(CAST(:ids AS text[])))"
    " GROUP BY p.person_id, p.primary_id, p.identified, p.properties::text")
# The rows persist writes to ClickHouse for a person: its identifiers' links, on
# every node (each keeps its own Join table), and its properties, on every
# replica (a replicated table every node has).
LINK_COLUMNS = ("link_key", "project_id", "actor_key", "person_key")
WRITE_OVERRIDES = (
    f"SELECT {persons.LINK_KEY.format(actor='a', project='{p:UUID}')}, {{p:UUID}}, a, pk FROM"
    " (SELECT reinterpretAsUInt128(sipHash128(m.1)) AS a, reinterpretAsUInt128(sipHash128(m.2)) AS pk"
    " FROM (SELECT arrayJoin(arrayZip({members:Array(String)}, {primaries:Array(String)})) AS m))")
PROPERTY_COLUMNS = ("project_id", "person_key", "properties", "version")
WRITE_PROPERTIES = (
    "SELECT {p:UUID}, reinterpretAsUInt128(sipHash128(r.1)), r.2, {v:UInt64}"
    " FROM (SELECT arrayJoin(arrayZip({primaries:Array(String)}, {properties:Array(String)})) AS r)")


def identity_lock(project_id: str) -> str:
    return f"persons:{project_id}"


def load(conn: Connection, project_id: str, ids: Sequence[str]) -> list[Person]:
    rows = conn.run(LOAD, p=project_id, ids=list(ids)) or []
    return [Person(pid, primary, bool(identified), orjson.loads(props), set(members))
            for pid, primary, identified, props, members in rows]


class PersonStore:
    def __init__(self, db: Database, ch: ClickHouse) -> None:
        self.db = db
        self.ch = ch

    def apply(self, project_id: str, batch_id: str, ops: Sequence[Operation],
              conn: Connection | None = None) -> Outcome | None:
        """Apply a batch's operations exactly once and bring ClickHouse up to date
        for the persons they touch. None when an earlier delivery applied them.
        ``conn``: the session persisting the batch (persist holds one connection
        per batch, never a second: a full pool cannot deadlock it)."""
        if not ops:
            return None
        if conn is not None:
            return self._locked(conn, project_id, batch_id, ops)
        return self.db.call(lambda c: self._locked(c, project_id, batch_id, ops))

    def _locked(self, conn: Connection, project_id: str, batch_id: str, ops: Sequence[Operation]) -> Outcome | None:
        key = identity_lock(project_id)
        conn.run(LOCK, k=key)
        try:
            outcome = in_transaction(conn, lambda: self._apply(conn, project_id, batch_id, ops))
            ids = persons.identifiers(ops)
            self.sync(conn, project_id, load(conn, project_id, ids),
                      [p.primary for p in outcome.absorbed] if outcome else [])
            return outcome
        finally:
            conn.run(UNLOCK, k=key)

    def _apply(self, conn: Connection, project_id: str, batch_id: str, ops: Sequence[Operation]) -> Outcome | None:
        fresh = conn.run("INSERT INTO person_batches (batch_id, project_id) VALUES (CAST(:b AS uuid), CAST(:p AS uuid))"
                         " ON CONFLICT DO NOTHING RETURNING 1", b=batch_id, p=project_id)
        if not fresh:
            return None
        identities = Identities(project_id, load(conn, project_id, persons.identifiers(ops)))
        outcome = identities.apply(ops)
        if outcome.changed:
            version = conn.run("SELECT nextval('person_version')")[0][0]
            changed = outcome.changed
            conn.run(
                "INSERT INTO persons (project_id, person_id, primary_id, identified, properties, version)"
                " SELECT CAST(:p AS uuid), i, pr, idf, CAST(pp AS jsonb), :v FROM unnest(CAST(:ids AS uuid[]),"
                " CAST(:prs AS text[]), CAST(:idfs AS boolean[]), CAST(:props AS text[])) AS t(i, pr, idf, pp)"
                " ON CONFLICT (project_id, person_id) DO UPDATE SET identified = EXCLUDED.identified,"
                " properties = EXCLUDED.properties, version = EXCLUDED.version, updated_at = now()",
                p=project_id, v=version, ids=[c.person_id for c in changed], prs=[c.primary for c in changed],
                idfs=[c.identified for c in changed], props=[orjson.dumps(c.properties).decode() for c in changed])
            members = [(m, c.person_id) for c in changed for m in sorted(c.members)]
            conn.run(
                "INSERT INTO person_ids (project_id, distinct_id, person_id)"
                " SELECT CAST(:p AS uuid), d, i FROM unnest(CAST(:ds AS text[]), CAST(:is AS uuid[])) AS t(d, i)"
                " ON CONFLICT (project_id, distinct_id) DO UPDATE SET person_id = EXCLUDED.person_id",
                p=project_id, ds=[m for m, _ in members], **{"is": [i for _, i in members]})
        if outcome.absorbed:
            conn.run("DELETE FROM persons WHERE project_id = CAST(:p AS uuid)"
                     " AND person_id = ANY(CAST(:ids AS uuid[]))",
                     p=project_id, ids=[a.person_id for a in outcome.absorbed])
        for link in outcome.refused:
            conn.run("INSERT INTO person_refusals (project_id, anonymous_id, user_id, batch_id)"
                     " VALUES (CAST(:p AS uuid), :a, :u, CAST(:b AS uuid))",
                     p=project_id, a=link.anonymous_id, u=link.user_id, b=batch_id)
        telemetry.PERSON_LINKS.labels("merged").inc(outcome.merged)
        telemetry.PERSON_LINKS.labels("refused").inc(len(outcome.refused))
        if outcome.refused:
            telemetry.event("identity links refused", refused=len(outcome.refused), batch_id=batch_id)
        return outcome

    def sync(self, conn: Connection, project_id: str, current: Sequence[Person],
             gone_primaries: Sequence[str] = ()) -> None:
        """Write the ClickHouse rows of these persons (as Postgres has them now):
        the overrides of their identifiers and their properties; the persons
        whose primaries are ``gone_primaries`` (absorbed) get empty properties."""
        pairs = persons.overrides(current)
        if pairs:
            self.ch.insert_on_every_node(persons.OVERRIDES, LINK_COLUMNS, WRITE_OVERRIDES, {
                "p": project_id, "members": [m for m, _ in pairs], "primaries": [p for _, p in pairs]})
        rows: list[tuple[str, str]] = [(p.primary, orjson.dumps(p.properties).decode()) for p in current]
        rows += [(primary, "{}") for primary in gone_primaries]
        if rows:
            version = conn.run("SELECT nextval('person_version')")[0][0]
            self.ch.insert_replicated_everywhere("person_properties", PROPERTY_COLUMNS, WRITE_PROPERTIES, {
                "p": project_id, "primaries": [r[0] for r in rows], "properties": [r[1] for r in rows], "v": version})

    def trim(self, retention_days: int) -> None:
        self.db.run("DELETE FROM person_batches WHERE applied_at < now() - make_interval(days => :d)",
                    d=retention_days)


def resync_links(db: Database, ch: ClickHouse) -> int:
    """Write every project's identity links again from Postgres (each project under
    its identity lock, so persist's own writes keep their order); returns the
    number of links written."""
    written = 0
    projects = [r[0] for r in db.run("SELECT DISTINCT project_id::text FROM person_ids")]
    store = PersonStore(db, ch)
    for project_id in projects:
        def work(conn: Connection, project_id: str = project_id) -> int:
            key = identity_lock(project_id)
            conn.run(LOCK, k=key)
            try:
                ids = [r[0] for r in conn.run("SELECT distinct_id FROM person_ids WHERE project_id = CAST(:p AS uuid)",
                                              p=project_id)]
                current = load(conn, project_id, ids)
                store.sync(conn, project_id, current)
                return len(persons.overrides(current))
            finally:
                conn.run(UNLOCK, k=key)
        written += db.call(work)
    return written


def links_differ(ch: ClickHouse) -> bool:
    """Whether some node's identity links are not those of the others (on a cluster:
    a node added since, or one whose disk was replaced, starts with none)."""
    if not ch.layout.cluster:
        return False
    every = ch.layout.on_every_replica(persons.OVERRIDES)
    found = dict(ch.rows(f"SELECT _shard_num, (count(), sum(cityHash64(link_key, person_key))) FROM {every}"
                         " GROUP BY _shard_num SETTINGS skip_unavailable_shards = 0"))
    return len({found.get(node, (0, 0)) for node in range(1, ch.nodes() + 1)}) > 1


def after_migrations(db: Database, ch: ClickHouse, applied: Sequence[str]) -> None:
    """Once migration 0022 has created the links table (empty), fill it from Postgres;
    on a cluster, also when the nodes' links differ (``pulse migrate`` after adding
    nodes fills theirs)."""
    if any(name.startswith("0022_") for name in applied) or links_differ(ch):
        resync_links(db, ch)


# Reads (the persons API) --------------------------------------------------------

KEYS = "arrayMap(x -> reinterpretAsUInt128(sipHash128(x)), {ids:Array(String)})"
EVENT_FIELDS = ("toString(event_id) AS event_id, occurred_at, received_at, event_type, user_id, anonymous_id,"
                " session_id, properties, path, url, referrer, title, user_agent, ip, locale, country")


def person_of(db: Database, project_id: str, distinct_id: str) -> Person:
    """The person an identifier belongs to (a person of its own when no link names it)."""
    found = db.call(lambda conn: load(conn, project_id, [distinct_id]))
    if found:
        return found[0]
    return Person(persons.person_id(project_id, distinct_id), distinct_id, False, {}, {distinct_id}, stored=False)


def _ts(moment: Any) -> str | None:
    """RFC 3339 in UTC (ClickHouse gives naive UTC datetimes)."""
    if not moment:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def profile(db: Database, ch: ClickHouse, project_id: str, distinct_id: str) -> dict[str, Any] | None:
    """``{person_id, distinct_ids, properties, first_seen, last_seen}``, or None
    when nothing is known of the identifier."""
    person = person_of(db, project_id, distinct_id)
    n, first, last = ch.rows(f"SELECT count(), min(occurred_at), max(occurred_at) FROM events"
                             f" WHERE project_id = {{p:UUID}} AND has({KEYS}, actor_key)",
                             {"p": project_id, "ids": sorted(person.members)})[0]
    if not n and not person.stored:
        return None
    return {"person_id": person.person_id, "distinct_ids": sorted(person.members), "properties": person.properties,
            "first_seen": _ts(first) if n else None, "last_seen": _ts(last) if n else None}


def listing(db: Database, ch: ClickHouse, project_id: str, search: str | None, limit: int) -> list[dict[str, Any]]:
    """Persons by last seen (newest first), or those with an identifier or a
    property value containing ``search`` (case-insensitive)."""
    params: dict[str, Any] = {"p": project_id, "limit": limit}
    matching = ""
    if search:
        params["s"] = search
        matching = (f" AND {persons.PERSON} IN (SELECT {persons.PERSON} FROM events WHERE project_id = {{p:UUID}}"
                    " AND positionCaseInsensitive(actor, {s:String}) > 0 UNION ALL SELECT person_key"
                    " FROM person_properties FINAL WHERE project_id = {p:UUID}"
                    " AND positionCaseInsensitive(properties, {s:String}) > 0)")
    rows = ch.rows(f"SELECT {persons.PERSON} AS pk, groupUniqArray(actor), max(occurred_at) AS last FROM events"
                   f" WHERE project_id = {{p:UUID}}{matching} GROUP BY pk ORDER BY last DESC, pk"
                   " LIMIT {limit:UInt32}", params)
    seen = sorted({i for _, ids, _ in rows for i in ids})
    stored = db.call(lambda conn: load(conn, project_id, seen)) if seen else []
    by_id = {m: p for p in stored for m in p.members}
    out = []
    for _, ids, last in rows:
        person = next((by_id[i] for i in sorted(ids) if i in by_id), None)
        if person is None:
            person = Person(persons.person_id(project_id, ids[0]), ids[0], False, {}, set(ids), stored=False)
        out.append({"person_id": person.person_id, "distinct_ids": sorted(person.members | set(ids)),
                    "last_seen": _ts(last)})
    return out


def export_lines(db: Database, ch: ClickHouse, project_id: str, distinct_id: str) -> Iterator[bytes]:
    """Everything held about the person (GDPR article 15), as NDJSON: a first
    line ``{"person": profile}``, then every event, oldest first."""
    found = profile(db, ch, project_id, distinct_id)
    if found is None:
        raise NotFound(f"nothing is known of {distinct_id[:80]!r} in this project")
    yield orjson.dumps({"person": found}) + b"\n"
    yield from ch.stream(f"SELECT {EVENT_FIELDS} FROM events WHERE project_id = {{p:UUID}} AND has({KEYS}, actor_key)"
                         " ORDER BY occurred_at", {"p": project_id, "ids": found["distinct_ids"]}, "JSONEachRow")


def described(db: Database, project_id: str, groups: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """``{person_id, distinct_ids}`` for each group of identifiers that belong
    to one person (as a query grouped them by person key): the stored person's
    identifiers, or the group's own for a person no link names."""
    seen = sorted({i for ids in groups for i in ids})
    stored = db.call(lambda conn: load(conn, project_id, seen)) if seen else []
    by_id = {m: p for p in stored for m in p.members}
    out = []
    for ids in groups:
        person = next((by_id[i] for i in sorted(ids) if i in by_id), None)
        if person is None:
            first = sorted(ids)[0]
            person = Person(persons.person_id(project_id, first), first, False, {}, set(ids), stored=False)
        out.append({"person_id": person.person_id, "distinct_ids": sorted(person.members | set(ids))})
    return out
