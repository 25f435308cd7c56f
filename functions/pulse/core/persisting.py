"""Persisting one ingest batch exactly once, however often it is delivered.

Delivery is at least once: KafkaSource (or the embedded dispatcher) may hand
persist the same record again after a timeout, a crash or a restart, and
persist itself may die between any two steps. The Postgres ledger is the
source of truth for "this event is stored"; ClickHouse only holds rows.

The batch id is the CloudEvent id of the Kafka record, so every redelivery of
a record carries the same id. Steps:

1. One Postgres transaction: record the batch as ``claimed`` in
   ``persist_batches`` and insert ``(project_id, event_id, batch_id)`` for every
   event into ``event_ledger`` with ``ON CONFLICT DO NOTHING``. The events this
   batch owns are those whose ledger row names this batch. Events whose row
   names another batch are duplicates (an earlier batch has them).
2. Insert the owned events into ClickHouse, stamped with the batch id.
3. Apply the identity operations the owned events carry (links, person
   properties: pulse.core.persons, whose header has their own crash notes).
4. Mark the batch ``done``.

Crash analysis:
- before step 1 commits: nothing is recorded; redelivery starts afresh.
- after 1, before or during 2: the batch is ``claimed``. Redelivery re-reads
  the events the ledger gives this batch, asks ClickHouse which of them are
  already stored under this batch id (a partial insert across partitions is
  covered too) and inserts only the rest.
- after 2, before 4: as above; ClickHouse already has them all, nothing is
  inserted twice; step 3 is applied once (its own record) and its ClickHouse
  side rewritten.
- after 4: redelivery finds ``done`` and only reports the earlier outcome.

Two deliveries of one record may also overlap (a delivery timed out and was
retried while persist still worked on it, perhaps on another replica). Each
runs the steps holding a Postgres advisory lock on the batch id, so they take
turns and the later one sees the earlier one's outcome; the lock is a session
lock, freed by a crash as well as at the end.

An event sent again in a *different* batch (a client retrying after a 503)
finds the ledger row of the first batch and is a duplicate; the first batch,
being in the log, is delivered and stored. The ledger keeps rows for
``ledger_retention_days`` (maintenance trims older ones), which bounds how
late a duplicate can still be recognised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pulse import telemetry
from pulse.core.events import EVENT_COLUMNS
from pulse.errors import Unavailable
from pulse.storage.clickhouse import Announcement, ClickHouse
from pulse.storage.postgres import Connection, Database, in_transaction

INSERT_COLUMNS = ("project_id", "batch_id", "received_at", *EVENT_COLUMNS)
FaultHook = Callable[[str], None]
# Step 3: (the session persisting the batch, project_id, batch_id, the owned rows) -> None.
IdentityHook = Callable[[Connection, str, str, Sequence[dict[str, str]]], None]


def project_lock(project_id: str) -> str:
    """The advisory lock persist holds shared while writing a project's batch."""
    return f"persist-project:{project_id}"


@dataclass(frozen=True)
class Outcome:
    project_id: str
    inserted: int
    duplicates: int
    first: str | None
    last: str | None
    redelivered: bool = False

    def as_event_data(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "inserted": self.inserted, "duplicates": self.duplicates,
                "from": self.first, "to": self.last}


@dataclass(frozen=True)
class _Claim:
    fresh: bool
    done: Outcome | None
    owned: frozenset[str]


class Persister:
    def __init__(self, db: Database, ch: ClickHouse, fault: FaultHook | None = None,
                 insert_chunk_rows: int = 5000, lock_wait_s: float = 20.0,
                 identity: IdentityHook | None = None) -> None:
        self.db = db
        self.ch = ch
        self.identity = identity
        self.fault = fault or (lambda step: None)
        self.insert_chunk_rows = max(1, insert_chunk_rows)
        self.lock_wait_s = lock_wait_s

    def persist(self, batch_id: str, project_id: str, received_at: str,
                rows: Sequence[dict[str, str]]) -> Outcome:
        return self.db.call(lambda conn: self._persist_alone(conn, batch_id, project_id, received_at, rows))

    def _persist_alone(self, conn: Connection, batch_id: str, project_id: str, received_at: str,
                       rows: Sequence[dict[str, str]]) -> Outcome:
        """The steps below with the batch's advisory lock held by this session: two
        deliveries of one record at once (a retry while the first is still running,
        perhaps on another replica) take turns, so the second finds the batch ``done``
        instead of reading ClickHouse before the first inserted. A crash ends the
        session and frees the lock. The project's lock is held shared meanwhile:
        a person deletion or a retention run (pulse.core.erasure) holds it
        exclusively, so no batch of the project is written while they work."""
        deadline = time.monotonic() + self.lock_wait_s
        keys = {"k": f"persist:{batch_id}", "pk": project_lock(project_id)}
        while True:
            mine, project = conn.run("SELECT pg_try_advisory_lock(hashtextextended(:k, 0)),"
                                     " pg_try_advisory_lock_shared(hashtextextended(:pk, 0))", **keys)[0]
            if mine and project:
                break
            conn.run(f"SELECT {'pg_advisory_unlock(hashtextextended(:k, 0))' if mine else '1'},"
                     f" {'pg_advisory_unlock_shared(hashtextextended(:pk, 0))' if project else '1'}", **keys)
            if time.monotonic() > deadline:
                raise Unavailable(f"batch {batch_id} is being persisted by another delivery, or its project's"
                                  " data is being deleted or expired", 1)
            time.sleep(0.02)
        try:
            # Announced to the ClickHouse insert group: concurrent batches share one insert.
            with self.ch.announce_insert("events", INSERT_COLUMNS) as announcement:
                return self._steps(conn, batch_id, project_id, received_at, rows, announcement)
        finally:
            conn.run("SELECT pg_advisory_unlock(hashtextextended(:k, 0)),"
                     " pg_advisory_unlock_shared(hashtextextended(:pk, 0))", **keys)

    def _steps(self, conn: Connection, batch_id: str, project_id: str, received_at: str,
               rows: Sequence[dict[str, str]], announcement: Announcement | None) -> Outcome:
        unique: dict[str, dict[str, str]] = {}
        for row in rows:
            unique.setdefault(row["event_id"], row)
        with telemetry.span("postgres ledger claim",
                            attributes={"db.system": "postgresql", "pulse.events": len(unique)}):
            claim = in_transaction(conn, lambda: self._claim(conn, batch_id, project_id, list(unique)))
        if claim.done is not None:
            return claim.done
        self.fault("after-ledger")
        owned = [row for event_id, row in unique.items() if event_id in claim.owned]
        mine = owned
        if not claim.fresh and owned:
            stored = self._stored_by_batch(project_id, batch_id)
            owned = [row for row in owned if row["event_id"] not in stored]
        if owned:
            self._insert(project_id, batch_id, received_at, owned, announcement)
        self.fault("after-insert")
        if self.identity is not None and mine:
            self.identity(conn, project_id, batch_id, mine)
        self.fault("after-identity")
        duplicates = len(rows) - len(claim.owned)
        times = [row["occurred_at"] for event_id, row in unique.items() if event_id in claim.owned]
        outcome = Outcome(project_id, len(claim.owned), duplicates,
                          min(times) if times else None, max(times) if times else None,
                          redelivered=not claim.fresh)
        conn.run(
            "UPDATE persist_batches SET status = 'done', inserted = :i, duplicates = :d,"
            " first_at = :f, last_at = :l, done_at = now() WHERE batch_id = CAST(:b AS uuid)",
            i=outcome.inserted, d=outcome.duplicates, f=outcome.first, l=outcome.last, b=batch_id,
        )
        telemetry.PERSIST_BATCH_SIZE.observe(len(rows))
        telemetry.PERSIST_INSERTED.inc(len(owned))
        telemetry.PERSIST_DUPLICATES.inc(outcome.duplicates)
        return outcome

    def _claim(self, conn: Connection, batch_id: str, project_id: str, event_ids: list[str]) -> _Claim:
        created = conn.run(
            "INSERT INTO persist_batches (batch_id, project_id, status)"
            " VALUES (CAST(:b AS uuid), CAST(:p AS uuid), 'claimed')"
            " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            b=batch_id, p=project_id,
        )
        fresh = bool(created)
        # One array literal instead of a driver-built array: canonical UUIDs need no escaping.
        ids = "{" + ",".join(event_ids) + "}"
        if not fresh:
            status, inserted, duplicates, first, last = conn.run(
                "SELECT status, inserted, duplicates, first_at, last_at FROM persist_batches"
                " WHERE batch_id = CAST(:b AS uuid)", b=batch_id,
            )[0]
            if status == "done":
                return _Claim(False, Outcome(project_id, inserted, duplicates, first, last, True), frozenset())
        inserted = conn.run(
            "WITH new AS (INSERT INTO event_ledger (project_id, event_id, batch_id)"
            " SELECT CAST(:p AS uuid), e, CAST(:b AS uuid) FROM unnest(CAST(:ids AS uuid[])) AS e"
            " ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM new",
            p=project_id, b=batch_id, ids=ids,
        )[0][0]
        if fresh and inserted == len(event_ids):  # the usual case: every event is new
            return _Claim(True, None, frozenset(event_ids))
        # Some were there already: this batch owns those whose ledger row names it
        # (inserted just now, or by an earlier delivery of this batch).
        mine = conn.run(
            "SELECT event_id::text FROM event_ledger WHERE project_id = CAST(:p AS uuid)"
            " AND event_id = ANY(CAST(:ids AS uuid[])) AND batch_id = CAST(:b AS uuid)",
            p=project_id, b=batch_id, ids=ids,
        )
        return _Claim(fresh, None, frozenset(r[0] for r in mine))

    def _stored_by_batch(self, project_id: str, batch_id: str) -> set[str]:
        # On a cluster, every replica is asked: a row one replica took (and has not
        # yet passed on) is stored, and must not be inserted again.
        table = self.ch.layout.on_every_replica(self.ch.layout.local("events"))
        rows = self.ch.rows(
            f"SELECT DISTINCT toString(event_id) FROM {table} WHERE project_id = {{p:UUID}} AND batch_id = {{b:UUID}}",
            {"p": project_id, "b": batch_id},
        )
        return {r[0] for r in rows}

    def _insert(self, project_id: str, batch_id: str, received_at: str, rows: list[dict[str, str]],
                announcement: Announcement | None = None) -> None:
        """Insert in chunks of ``insert_chunk_rows``, so the encoded rows held at once stay
        bounded whatever the batch size (a partial insert is what a redelivery completes)."""
        # Each row's JSON object with the batch's three fields in front (no dict copies).
        stamp = orjson.dumps({"project_id": project_id, "batch_id": batch_id, "received_at": received_at})[:-1] + b","
        for start in range(0, len(rows), self.insert_chunk_rows):
            chunk = rows[start:start + self.insert_chunk_rows]
            body = b"\n".join(stamp + orjson.dumps(row)[1:] for row in chunk)
            with telemetry.CLICKHOUSE_INSERT_LATENCY.time(), \
                    telemetry.span("clickhouse insert",
                                   attributes={"db.system": "clickhouse", "pulse.rows": len(chunk)}):
                self.ch.insert_grouped("events", INSERT_COLUMNS, body, announcement)

    def trim_ledger(self, retention_days: int) -> int:
        """Forget ledger entries and batch records older than the retention window."""
        removed = self.db.run(
            "WITH gone AS (DELETE FROM event_ledger WHERE claimed_at < now() - make_interval(days => :d)"
            " RETURNING 1) SELECT count(*) FROM gone", d=retention_days)[0][0]
        self.db.run(
            "DELETE FROM persist_batches WHERE status = 'done' AND claimed_at < now() - make_interval(days => :d)",
            d=retention_days)
        return int(removed)
