"""Erasure: a person deleted on request (GDPR article 17), and a project's
events older than its retention removed. Both change ClickHouse (events and
every rollup) and Postgres, and both run while holding the project's persist
lock exclusively (``persisting.project_lock``; persist holds it shared while
it writes a batch), so no batch of the project lands while they work: a row
they compute from the events table cannot be joined by a newer one midway.
The lock is a Postgres session lock, freed by a crash as well.

Deleting a person (``run_deletion``; a job of the export function, started by
``DELETE /v1/persons/{id}`` through a ``dev.pulse.person.deletion.requested``
CloudEvent). The job row (``person_deletions``) holds the person's
identifiers until it is done and moves through stages:

1. ``requested`` → ``counted``: read the person's events (every identifier's
   ``actor_key``): their ids, how many, the hours they fall in (all of them,
   and those of page views); store these with the job, and the suppression
   hashes if asked, in one transaction.
2. ``counted`` → ``deleted``: ``ALTER TABLE ... DELETE`` (synchronous) of the
   identifiers' rows from ``events`` and every table keyed by actor
   (``actor_hours``, ``actor_type_hours``, ``page_hours``, ``type_spans``,
   ``page_spans``, ``cohort_members``), their overrides and person properties; then the rows of
   ``type_hours`` and ``path_hours`` (counts without actors) for the stored
   hours, and the ``session_spans`` rows of the stored sessions, are deleted
   and rebuilt from the events that remain.
3. ``deleted`` → done: one transaction removes the events' ledger rows, the
   person's rows (``persons``, ``person_ids``, ``person_refusals``), the
   stored event ids, identifiers and hours, and marks the job done.

Crash notes: every step of 2 sets state rather than adding to it (a delete
of rows that are gone deletes nothing; a rebuilt hour is deleted and rebuilt
again), so a job that dies anywhere is run again from its stage by the
redelivered CloudEvent: 1 reads the same events (nothing was deleted yet);
2 repeats; 3 is one transaction. A job that fails records the error and
keeps its stage and identifiers: the next delivery of its CloudEvent (the
Trigger retries; an operator may send it again) resumes it.

What remains: nothing of the person in any table (the job's audit row keeps
who asked, when, and the count); ClickHouse drops the rewritten parts within
minutes. The raw topic (until its retention), the dead-letter topic and
export files made earlier may still hold their events. With ``suppress``,
ingest drops later events that carry any of the identifiers (hashed in
``suppressed_ids``); events accepted before (in flight in the topic) are
still stored.

On a ClickHouse cluster (docs/scaling.md) every statement must reach every
copy of the rows it changes, and return only when it has; ``ClickHouse.mutate``
and ``insert_select`` give each its cluster form (one node: the statement as
written):

- a sharded table (events, the hourly rollups, the spans) is a Distributed
  table, which takes no mutation (``ALTER TABLE events DELETE`` fails there:
  "doesn't support mutations"): the delete goes to ``<table>_local ON
  CLUSTER``, which one replica of each shard runs and replication passes
  on; ``mutations_sync = 2`` waits for every replica;
- ``person_links`` is a Join table on each node, not replicated: ``ALTER
  TABLE person_links ON CLUSTER`` deletes the person's links on every node
  (a plain ALTER would reach only the node Pulse is connected to);
- ``person_properties`` and ``cohort_members`` are replicated tables every
  node has (one replication group): a plain ``ALTER`` is passed to every
  replica by replication (``ON CLUSTER`` would submit it once per shard);
- rows computed again (the hourly counts of a deleted person's hours, the
  spans after retention) are inserted through the Distributed table, written
  on every shard before the insert returns, never deduplicated (a job run
  again deletes the rows it wrote and writes the same block again: a
  replicated table would drop it as a retried insert).

A node that does not answer makes the step fail (``Unavailable``, or the
``ON CLUSTER`` wait running out); the job keeps its stage and resumes on the
next delivery, each step being idempotent as below. An ``ON CLUSTER``
statement that timed out stays queued and still runs on the node when it is
back.

Retention (``expire``; the daily maintenance job, per project): events before
the start of the hour ``retention_days`` ago are removed, with the hourly
rollups' rows before that hour (the same events, as the cut falls on an hour).
Span rows whose first event is before the cut are deleted, then the project's
spans are written again from the events that remain (first and last are a
min and a max: a rewritten span that still exists changes nothing). The cut
is recorded in ``projects.retention_pending_cut`` before the first step and
cleared after the last; every step is idempotent, so a run that dies is
resumed by the next with the same cut.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pulse import telemetry
from pulse.core.persisting import project_lock
from pulse.errors import NotFound
from pulse.storage.clickhouse import ClickHouse
from pulse.storage.postgres import Connection, Database, in_transaction

KEYS = "arrayMap(x -> reinterpretAsUInt128(sipHash128(x)), {ids:Array(String)})"
ACTOR_TABLES = ("events", "actor_hours", "actor_type_hours", "page_hours", "type_spans", "page_spans",
                "cohort_members")
HOURLY_TABLES = ("actor_hours", "actor_type_hours", "page_hours", "type_hours", "path_hours")
SPANS = {"type_spans": ("event_type", ""), "page_spans": ("path", " AND event_type = 'page_view'")}
SYNC = " SETTINGS mutations_sync = 2"
# The events the rollups count (their materialized views' filter, migration 0021).
ROLLED_UP = "bot = 0"


def suppression_hash(project_id: str, identifier: str) -> bytes:
    return hashlib.sha256(f"{project_id}\x00{identifier}".encode()).digest()


class Suppressions:
    """The identifiers whose events ingest drops, per project (hashes from
    ``suppressed_ids``), read from Postgres at most every ``ttl_s``."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, frozenset[bytes]]] = {}
        self._lock = threading.Lock()

    def hashes(self, project_id: str) -> frozenset[bytes]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(project_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        found = frozenset(bytes(r[0]) for r in self.db.run(
            "SELECT id_sha256 FROM suppressed_ids WHERE project_id = CAST(:p AS uuid)", p=project_id))
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[project_id] = (now, found)
        return found

    def kept(self, project_id: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
        """The rows none of whose identifiers is suppressed."""
        hashes = self.hashes(project_id)
        if not hashes:
            return rows
        return [r for r in rows if not any(i and suppression_hash(project_id, i) in hashes
                                           for i in (r["user_id"], r["anonymous_id"]))]


@dataclass(frozen=True)
class Deletion:
    deletion_id: str
    project_id: str
    person_id: str
    status: str
    stage: str
    events_deleted: int | None
    requested_at: datetime
    finished_at: datetime | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"deletion_id": self.deletion_id, "person_id": self.person_id, "status": self.status,
                "events_deleted": self.events_deleted, "requested_at": self.requested_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                **({"error": self.error} if self.error else {})}


COLUMNS = ("deletion_id::text, project_id::text, person_id::text, status, stage, events_deleted,"
           " requested_at, finished_at, error")


class Deletions:
    """The jobs' state in Postgres (``person_deletions``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, project_id: str, person_id: str, identifiers: Sequence[str], requested_by: str,
               suppress: bool) -> str:
        deletion_id = str(uuid.uuid4())
        self.db.run(
            "INSERT INTO person_deletions (deletion_id, project_id, person_id, requested_by, suppress, status,"
            " identifiers) VALUES (CAST(:d AS uuid), CAST(:p AS uuid), CAST(:pe AS uuid), :by, :s, 'queued',"
            " CAST(:ids AS text[]))", d=deletion_id, p=project_id, pe=person_id, by=requested_by, s=suppress,
            ids=list(identifiers))
        telemetry.event("person deletion requested", deletion_id=deletion_id, project_id=project_id,
                        requested_by=requested_by, suppress=suppress)
        return deletion_id

    def get(self, project_id: str, deletion_id: str) -> Deletion:
        rows = self.db.run(f"SELECT {COLUMNS} FROM person_deletions WHERE project_id = CAST(:p AS uuid)"
                           " AND deletion_id = CAST(:d AS uuid)", p=project_id, d=deletion_id)
        if not rows:
            raise NotFound(f"no deletion {deletion_id} in this project")
        return Deletion(*rows[0])


def run_deletion(db: Database, ch: ClickHouse, project_id: str, deletion_id: str) -> bool:
    """Run (or finish) a deletion job; False when it was done already."""
    job = Deletions(db).get(project_id, deletion_id)
    if job.status in ("done", "failed"):
        return False
    db.run("UPDATE person_deletions SET status = 'running' WHERE deletion_id = CAST(:d AS uuid)", d=deletion_id)
    try:
        db.call(lambda conn: _locked(conn, project_id, lambda: _delete(conn, ch, project_id, deletion_id)))
    except Exception as exc:
        db.run("UPDATE person_deletions SET error = :e WHERE deletion_id = CAST(:d AS uuid)",
               e=(str(exc) or type(exc).__name__)[:500], d=deletion_id)
        raise
    done = Deletions(db).get(project_id, deletion_id)
    telemetry.PERSON_DELETIONS.labels("done").inc()
    telemetry.event("person deleted", deletion_id=deletion_id, project_id=project_id,
                    events_deleted=done.events_deleted)
    return True


def _locked(conn: Connection, project_id: str, work: Any) -> Any:
    """``work()`` with the project's persist lock held exclusively by this session."""
    key = project_lock(project_id)
    conn.run("SELECT pg_advisory_lock(hashtextextended(:k, 0))", k=key)
    try:
        return work()
    finally:
        conn.run("SELECT pg_advisory_unlock(hashtextextended(:k, 0))", k=key)


def _delete(conn: Connection, ch: ClickHouse, project_id: str, deletion_id: str) -> None:
    stage, identifiers, suppress = conn.run(
        "SELECT stage, identifiers, suppress FROM person_deletions WHERE deletion_id = CAST(:d AS uuid)",
        d=deletion_id)[0]
    ids = list(identifiers or [])
    params = {"p": project_id, "ids": ids}
    if stage == "requested":
        event_ids, n, hours, page_hours, sessions = ch.rows(
            "SELECT groupArray(toString(event_id)), count(),"
            f" arraySort(groupUniqArrayIf(toStartOfHour(occurred_at), {ROLLED_UP})),"
            f" arraySort(groupUniqArrayIf(toStartOfHour(occurred_at), event_type = 'page_view' AND {ROLLED_UP})),"
            f" arraySort(groupUniqArrayIf(session_id, session_id != '' AND {ROLLED_UP}))"
            f" FROM events WHERE project_id = {{p:UUID}} AND has({KEYS}, actor_key)", params)[0]

        def counted() -> None:
            conn.run("INSERT INTO person_deletion_events (deletion_id, event_id) SELECT CAST(:d AS uuid), e"
                     " FROM unnest(CAST(:e AS uuid[])) AS e ON CONFLICT DO NOTHING", d=deletion_id, e=event_ids)
            conn.run("UPDATE person_deletions SET stage = 'counted', events_deleted = :n, hours = CAST(:h AS"
                     " timestamp[]), page_hours = CAST(:ph AS timestamp[]), sessions = CAST(:s AS text[])"
                     " WHERE deletion_id = CAST(:d AS uuid)",
                     n=int(n), h=[str(h) for h in hours], ph=[str(h) for h in page_hours], s=list(sessions),
                     d=deletion_id)
            if suppress:
                conn.run("INSERT INTO suppressed_ids (project_id, id_sha256) SELECT CAST(:p AS uuid), h"
                         " FROM unnest(CAST(:hs AS bytea[])) AS h ON CONFLICT DO NOTHING",
                         p=project_id, hs=[suppression_hash(project_id, i) for i in ids])

        in_transaction(conn, counted)
        stage = "counted"
    if stage == "counted":
        hours, page_hours, sessions = conn.run("SELECT hours, page_hours, sessions FROM person_deletions"
                                               " WHERE deletion_id = CAST(:d AS uuid)", d=deletion_id)[0]
        for table in ACTOR_TABLES:
            ch.mutate(table, f"DELETE WHERE project_id = {{p:UUID}} AND has({KEYS}, actor_key)" + SYNC, params)
        ch.mutate("person_properties", f"DELETE WHERE project_id = {{p:UUID}} AND has({KEYS}, person_key)" + SYNC,
                  params)
        ch.mutate("person_links", f"DELETE WHERE project_id = {{p:UUID}} AND has({KEYS}, actor_key)" + SYNC, params)
        _rebuild_hours(ch, project_id, "type_hours", "event_type", "", list(hours or []))
        _rebuild_hours(ch, project_id, "path_hours", "path", " AND event_type = 'page_view'", list(page_hours or []))
        _rebuild_sessions(ch, project_id, list(sessions or []))
        conn.run("UPDATE person_deletions SET stage = 'deleted' WHERE deletion_id = CAST(:d AS uuid)", d=deletion_id)

    def finish() -> None:
        conn.run("DELETE FROM event_ledger WHERE project_id = CAST(:p AS uuid) AND event_id IN"
                 " (SELECT event_id FROM person_deletion_events WHERE deletion_id = CAST(:d AS uuid))",
                 p=project_id, d=deletion_id)
        conn.run("DELETE FROM persons WHERE project_id = CAST(:p AS uuid) AND person_id IN (SELECT person_id"
                 " FROM person_ids WHERE project_id = CAST(:p AS uuid) AND distinct_id = ANY(CAST(:ids AS text[])))",
                 p=project_id, ids=ids)
        conn.run("DELETE FROM person_refusals WHERE project_id = CAST(:p AS uuid) AND (anonymous_id ="
                 " ANY(CAST(:ids AS text[])) OR user_id = ANY(CAST(:ids AS text[])))", p=project_id, ids=ids)
        conn.run("DELETE FROM person_deletion_events WHERE deletion_id = CAST(:d AS uuid)", d=deletion_id)
        conn.run("UPDATE person_deletions SET status = 'done', identifiers = NULL, hours = NULL, page_hours = NULL,"
                 " sessions = NULL,"
                 " error = NULL, finished_at = now() WHERE deletion_id = CAST(:d AS uuid)", d=deletion_id)

    in_transaction(conn, finish)


def _rebuild_hours(ch: ClickHouse, project_id: str, table: str, column: str, where: str,
                   hours: list[datetime]) -> None:
    """Rows of an hourly count table without actors, for these hours, deleted and
    counted again from the events table (the project's batches wait meanwhile)."""
    if not hours:
        return
    params = {"p": project_id, "hours": hours, "first": min(hours).date(), "last": max(hours).date()}
    ch.mutate(table, "DELETE WHERE project_id = {p:UUID} AND has({hours:Array(DateTime)}, hour)" + SYNC, params)
    ch.insert_select(table, f"SELECT project_id, toStartOfHour(occurred_at) AS h, {column}, count() FROM events"
                     " WHERE project_id = {p:UUID} AND toDate(occurred_at) BETWEEN {first:Date} AND {last:Date}"
                     f" AND has({{hours:Array(DateTime)}}, toStartOfHour(occurred_at)) AND {ROLLED_UP}{where}"
                     f" GROUP BY project_id, h, {column}", params)


SESSION_SPANS = (f"SELECT project_id, session_id, min(occurred_at), max(occurred_at),"
                 " minMap(map(country, occurred_at)), maxMap(map(country, occurred_at))"
                 f" FROM events WHERE project_id = {{p:UUID}} AND session_id != '' AND {ROLLED_UP}")


def _rebuild_sessions(ch: ClickHouse, project_id: str, sessions: list[str]) -> None:
    """The span rows of these sessions deleted and computed again from the events
    that remain (another person's events may share a session id)."""
    if not sessions:
        return
    params = {"p": project_id, "s": sessions}
    ch.mutate("session_spans", "DELETE WHERE project_id = {p:UUID} AND has({s:Array(String)}, session_id)" + SYNC,
              params)
    ch.insert_select("session_spans", SESSION_SPANS + " AND has({s:Array(String)}, session_id)"
                     " GROUP BY project_id, session_id", params)


# Retention --------------------------------------------------------------------

def retention_cutoff(retention_days: int, now: datetime | None = None) -> datetime:
    """The start of the hour ``retention_days`` ago (UTC): events before it go."""
    moment = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    return moment.replace(minute=0, second=0, microsecond=0)


def expire(db: Database, ch: ClickHouse, project_id: str, retention_days: int, now: datetime | None = None) -> int:
    """Remove the project's events (and rollup rows) before its retention cutoff;
    returns how many events were removed."""
    cutoff = retention_cutoff(retention_days, now).replace(tzinfo=None)
    pending = db.run("SELECT retention_pending_cut FROM projects WHERE project_id = CAST(:p AS uuid)", p=project_id)
    if not pending or (pending[0][0] is None and not _count_old(ch, {"p": project_id, "cut": cutoff})):
        return 0

    def work(conn: Connection) -> int:
        cut = conn.run("SELECT retention_pending_cut FROM projects WHERE project_id = CAST(:p AS uuid)",
                       p=project_id)[0][0]
        if cut is None:
            cut = cutoff
            conn.run("UPDATE projects SET retention_pending_cut = :c WHERE project_id = CAST(:p AS uuid)",
                     c=cut, p=project_id)
        removed = _expire(ch, {"p": project_id, "cut": cut})
        conn.run("UPDATE projects SET retention_pending_cut = NULL WHERE project_id = CAST(:p AS uuid)", p=project_id)
        return removed

    return int(db.call(lambda conn: _locked(conn, project_id, lambda: work(conn))))


def _count_old(ch: ClickHouse, params: dict[str, Any]) -> int:
    return int(ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID}"
                       " AND occurred_at < {cut:DateTime64(3, 'UTC')}", params)[0][0])


def _expire(ch: ClickHouse, params: dict[str, Any]) -> int:
    """The steps of one run, each idempotent; the cut is recorded in Postgres until
    the last one is done, so a run that died is resumed with the same cut. Span
    rows are deleted before they are written again (a background merge of an old
    row with its recomputed one would otherwise carry the old first time)."""
    removed = _count_old(ch, params)
    ch.mutate("events", "DELETE WHERE project_id = {p:UUID} AND occurred_at < {cut:DateTime64(3, 'UTC')}" + SYNC,
              params)
    for table in HOURLY_TABLES:
        ch.mutate(table, "DELETE WHERE project_id = {p:UUID} AND hour < {cut:DateTime64(3, 'UTC')}" + SYNC, params)
    for table, (column, where) in SPANS.items():
        ch.mutate(table, "DELETE WHERE project_id = {p:UUID} AND first_at < {cut:DateTime64(3, 'UTC')}" + SYNC, params)
        ch.insert_select(table, f"SELECT project_id, {column}, actor_key, min(occurred_at), max(occurred_at)"
                         f" FROM events WHERE project_id = {{p:UUID}} AND {ROLLED_UP}{where}"
                         f" GROUP BY project_id, {column}, actor_key", params)
    ch.mutate("session_spans", "DELETE WHERE project_id = {p:UUID} AND first_at < {cut:DateTime64(3, 'UTC')}" + SYNC,
              params)
    ch.insert_select("session_spans", SESSION_SPANS + " GROUP BY project_id, session_id", params)
    return removed
