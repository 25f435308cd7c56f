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
retried while persist still worked on it, perhaps on another replica). They
take turns: within a process by a table of the batches in hand, across
processes by a Postgres advisory lock on the batch id, held from the claim
to the ``done`` mark on a session of its own (a crash ends the session and
frees the lock). The later delivery sees the earlier one's outcome. The
project's advisory lock is held shared meanwhile: a person deletion or a
retention run (pulse.core.erasure) holds it exclusively, so no batch of the
project is written while they work.

An event sent again in a *different* batch (a client retrying after a 503)
finds the ledger row of the first batch and is a duplicate; the first batch,
being in the log, is delivered and stored. The ledger keeps rows for
``ledger_retention_days`` (maintenance trims older ones), which bounds how
late a duplicate can still be recognised.

Claims of concurrent batches, and why they cannot deadlock:
- Each step is paid once for whatever is in flight (pulse.group_commit): the
  batches being delivered at once are claimed in one transaction, their rows
  go into ClickHouse in one insert, and they are marked ``done`` in one
  statement (steps 1, 2 and 4; step 3 runs per batch). Within a process,
  claim transactions run one at a time.
- Across processes (replicas, a bulk loader, a baseline running beside
  Pulse) claim transactions do run concurrently, and two of them may hold the
  same event ids (a client re-sent an event; the re-send landed in another
  batch). A transaction that inserts a ledger key another uncommitted
  transaction inserted waits for that transaction. Every claim inserts its
  ledger keys in one global order: the insert's rows are sorted by (project
  id, event id) in the statement itself (``ORDER BY``), whoever builds it; a
  key that several batches of one claim hold is inserted by the first and
  skipped for the others (it conflicts with a row of the same statement, a
  wait for nobody). So a transaction holds only keys smaller than the one it
  waits for. In a cycle of waits T1 → T2 → … → T1, T2 holds the key k1 that
  T1 waits for and waits itself for a key k2 > k1, T3 for k3 > k2, and so on
  back to T1, giving k1 < k2 < … < k1: impossible. No cycle, no deadlock
  (Postgres 40P01). tests/integration/test_overlapping.py runs four
  persisters on shuffled overlapping ids (without the ORDER BY it deadlocks).
  ``persist_batches`` rows are only written by the holder of the batch's
  advisory lock, and advisory locks are only tried, never waited for, so
  neither adds a wait.
- Which batch owns a re-sent event is decided by whichever claim commits its
  ledger row first; the other batch counts it as a duplicate. Either way the
  event is stored once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from pg8000.exceptions import DatabaseError, InterfaceError

from pulse import telemetry
from pulse.core.events import CANONICAL_UUID, EVENT_COLUMNS, RowView
from pulse.errors import InvalidInput, Unavailable
from pulse.group_commit import GroupCommit
from pulse.storage.clickhouse import Announcement, ClickHouse
from pulse.storage.postgres import Connection, Database, in_transaction

INSERT_COLUMNS = ("project_id", "batch_id", "received_at", *EVENT_COLUMNS)
encode = msgspec.json.Encoder().encode  # a row (a dict, or a record's Row) as one JSON object
FaultHook = Callable[[str], None]
# Step 3: (project_id, batch_id, the owned rows) -> None.
IdentityHook = Callable[[str, str, Sequence[RowView]], None]
CLAIM_MAX_EVENTS = 100_000  # events claimed in one transaction at most


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
class _Request:
    batch_id: str
    project_id: str
    event_ids: list[str]  # distinct


@dataclass(frozen=True)
class _Claim:
    locked: bool  # False: another delivery of the batch holds it now
    fresh: bool = False
    done: Outcome | None = None
    lost: frozenset[str] = frozenset()  # the batch's events it does not own (another batch has them)


@dataclass(frozen=True)
class _Finish:
    batch_id: str
    project_id: str
    outcome: Outcome | None  # None: release the batch without marking it


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
        self.locks = BatchLocks(db)
        self._in_hand: dict[str, threading.Event] = {}
        self._in_hand_lock = threading.Lock()
        self._claims: GroupCommit[_Request, _Claim] = GroupCommit(
            self._claim_round, max_size=CLAIM_MAX_EVENTS, size=lambda r: len(r.event_ids))
        self._finishes: GroupCommit[_Finish, None] = GroupCommit(self._finish_round)

    def persist(self, batch_id: str, project_id: str, received_at: str,
                rows: Sequence[RowView]) -> Outcome:
        if not CANONICAL_UUID.match(batch_id):
            raise InvalidInput.field("id", "a batch's CloudEvent id must be a UUID")
        unique: dict[str, RowView] = {}
        for row in rows:
            unique.setdefault(row["event_id"], row)
        with self._alone(batch_id), self.ch.announce_insert("events", INSERT_COLUMNS) as announcement:
            # Announced to the ClickHouse insert group: concurrent batches share one insert.
            claim = self._claim(_Request(batch_id, project_id, list(unique)))
            try:
                outcome = claim.done or self._store(batch_id, project_id, received_at, len(rows), unique,
                                                    claim, announcement)
            except BaseException:
                self.locks.release([(batch_id, project_id)])
                raise
            self._finishes.submit(_Finish(batch_id, project_id, outcome if claim.done is None else None))
            return outcome

    def recorded(self, batch_id: str, project_id: str) -> Outcome | None:
        """The outcome of a batch already done, else None."""
        if not CANONICAL_UUID.match(batch_id):
            return None
        rows = self.db.run("SELECT inserted, duplicates, first_at, last_at FROM persist_batches"
                           " WHERE batch_id = CAST(:b AS uuid) AND status = 'done'", b=batch_id)
        if not rows:
            return None
        inserted, duplicates, first, last = rows[0]
        return Outcome(project_id, inserted, duplicates, first, last, True)

    @contextmanager
    def _alone(self, batch_id: str) -> Iterator[None]:
        """One delivery of a batch at a time in this process (others wait their turn)."""
        deadline = time.monotonic() + self.lock_wait_s
        mine = threading.Event()
        while True:
            with self._in_hand_lock:
                other = self._in_hand.setdefault(batch_id, mine)
            if other is mine:
                break
            if not other.wait(max(0.0, deadline - time.monotonic())):
                raise Unavailable(f"batch {batch_id} is being persisted by another delivery", 1)
        try:
            yield
        finally:
            with self._in_hand_lock:
                del self._in_hand[batch_id]
            mine.set()

    def _claim(self, request: _Request) -> _Claim:
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            claim = self._claims.submit(request)
            if claim.locked:
                return claim
            if time.monotonic() > deadline:  # another replica holds the batch, or an erasure the project
                raise Unavailable(f"batch {request.batch_id} is being persisted by another delivery, or its"
                                  " project's data is being deleted or expired", 1)
            time.sleep(0.02)

    def _store(self, batch_id: str, project_id: str, received_at: str, total: int,
               unique: dict[str, RowView], claim: _Claim, announcement: Announcement) -> Outcome:
        self.fault("after-ledger")
        lost = claim.lost
        owned = [row for event_id, row in unique.items() if event_id not in lost] if lost else list(unique.values())
        mine = owned
        if not claim.fresh and owned:
            stored = self._stored_by_batch(project_id, batch_id)
            owned = [row for row in owned if row["event_id"] not in stored]
        if owned:
            self._insert(project_id, batch_id, received_at, owned, announcement)
        else:
            announcement.group.withdraw(announcement)
        self.fault("after-insert")
        if self.identity is not None and mine:
            self.identity(project_id, batch_id, mine)
        self.fault("after-identity")
        times = [row["occurred_at"] for row in mine]
        outcome = Outcome(project_id, len(mine), total - len(mine),
                          min(times) if times else None, max(times) if times else None,
                          redelivered=not claim.fresh)
        telemetry.PERSIST_BATCH_SIZE.observe(total)
        telemetry.PERSIST_INSERTED.inc(len(owned))
        telemetry.PERSIST_DUPLICATES.inc(outcome.duplicates)
        return outcome

    # The grouped steps ------------------------------------------------------

    def _claim_round(self, requests: list[_Request]) -> list[_Claim]:
        """Step 1 for every batch being delivered now: their advisory locks, then one transaction."""
        locked = self.locks.try_acquire([(r.batch_id, r.project_id) for r in requests])
        mine = [r for r in requests if r.batch_id in locked]
        claims: dict[str, _Claim] = {}
        if mine:
            try:
                with telemetry.span("postgres ledger claim", attributes={
                        "db.system": "postgresql", "pulse.batches": len(mine),
                        "pulse.events": sum(len(r.event_ids) for r in mine)}):
                    claims = self.db.call(lambda conn: in_transaction(conn, lambda: _claim_all(conn, mine)))
            except BaseException:
                self.locks.release([(r.batch_id, r.project_id) for r in mine])
                raise
        return [claims.get(r.batch_id) or _Claim(locked=False) for r in requests]

    def _finish_round(self, finishes: list[_Finish]) -> list[None]:
        """Step 4 for every batch finishing now, then their advisory locks released."""
        marked = sorted((f for f in finishes if f.outcome is not None), key=lambda f: f.batch_id)
        try:
            if marked:
                outcomes = [f.outcome for f in marked if f.outcome is not None]
                self.db.run(
                    "UPDATE persist_batches AS pb SET status = 'done', inserted = t.i, duplicates = t.d,"
                    " first_at = t.f, last_at = t.l, done_at = now()"
                    " FROM unnest(CAST(:b AS uuid[]), CAST(:i AS integer[]), CAST(:d AS integer[]),"
                    " CAST(:f AS text[]), CAST(:l AS text[])) AS t(b, i, d, f, l) WHERE pb.batch_id = t.b",
                    b=[f.batch_id for f in marked], i=[o.inserted for o in outcomes],
                    d=[o.duplicates for o in outcomes], f=[o.first for o in outcomes],
                    l=[o.last for o in outcomes])
        finally:
            self.locks.release([(f.batch_id, f.project_id) for f in finishes])
        return [None] * len(finishes)

    def _stored_by_batch(self, project_id: str, batch_id: str) -> set[str]:
        # On a cluster, every replica is asked: a row one replica took (and has not
        # yet passed on) is stored, and must not be inserted again.
        table = self.ch.layout.on_every_replica(self.ch.layout.local("events"))
        rows = self.ch.rows(
            f"SELECT DISTINCT toString(event_id) FROM {table} WHERE project_id = {{p:UUID}} AND batch_id = {{b:UUID}}",
            {"p": project_id, "b": batch_id},
        )
        return {r[0] for r in rows}

    def _insert(self, project_id: str, batch_id: str, received_at: str, rows: list[RowView],
                announcement: Announcement | None = None) -> None:
        """Insert in chunks of ``insert_chunk_rows``, so the encoded rows held at once stay
        bounded whatever the batch size (a partial insert is what a redelivery completes)."""
        # Each row's JSON object with the batch's three fields in front (no dict copies).
        stamp = orjson.dumps({"project_id": project_id, "batch_id": batch_id, "received_at": received_at})[:-1] + b","
        for start in range(0, len(rows), self.insert_chunk_rows):
            chunk = rows[start:start + self.insert_chunk_rows]
            body = b"\n".join([stamp + encode(row)[1:] for row in chunk])
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


def persisted_batches(db: Database, batch_ids: Sequence[str]) -> set[str]:
    """Those of the batches that are done (stored in both stores)."""
    wanted = sorted({b for b in batch_ids if CANONICAL_UUID.match(b)})
    if not wanted:
        return set()
    return {row[0] for row in db.run(
        "SELECT batch_id::text FROM persist_batches WHERE batch_id = ANY(CAST(:b AS uuid[])) AND status = 'done'",
        b=_uuid_array(wanted))}


def _uuid_array(values: Sequence[str]) -> str:
    """One array literal instead of a driver-built array: canonical UUIDs need no escaping."""
    return "{" + ",".join(values) + "}"


def _array(values: Sequence[str]) -> str:
    """An array literal of strings made of letters, digits, '-' and ':' (nothing to escape)."""
    return "{" + ",".join(values) + "}"


def _claim_all(conn: Connection, requests: list[_Request]) -> dict[str, _Claim]:
    """Step 1 for several batches (each locked by us) in the caller's transaction."""
    requests = sorted(requests, key=lambda r: r.batch_id)
    fresh = {row[0] for row in conn.run(
        "INSERT INTO persist_batches (batch_id, project_id, status)"
        " SELECT b, p, 'claimed' FROM unnest(CAST(:b AS uuid[]), CAST(:p AS uuid[])) AS t(b, p)"
        " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id::text",
        b=_uuid_array([r.batch_id for r in requests]), p=_uuid_array([r.project_id for r in requests]))}
    claims: dict[str, _Claim] = {}
    again = [r.batch_id for r in requests if r.batch_id not in fresh]
    if again:  # redeliveries: a batch already done only reports its outcome
        for batch_id, status, inserted, duplicates, first, last in conn.run(
                "SELECT batch_id::text, status, inserted, duplicates, first_at, last_at FROM persist_batches"
                " WHERE batch_id = ANY(CAST(:b AS uuid[]))", b=_uuid_array(again)):
            if status == "done":
                project_id = next(r.project_id for r in requests if r.batch_id == batch_id)
                claims[batch_id] = _Claim(True, False, Outcome(project_id, inserted, duplicates, first, last, True))
    open_requests = [r for r in requests if r.batch_id not in claims and r.event_ids]
    # Every ledger key in one global order, (project id, event id), sorted by Postgres; a key
    # several batches of this claim hold is inserted for the first of them. See the notes above.
    lost: dict[str, set[str]] = {}  # batch → its events whose ledger row names another batch
    if open_requests:
        for batch_id, event_id in conn.run(
                "WITH t AS (SELECT * FROM unnest(CAST(:p AS uuid[]), CAST(:e AS uuid[]), CAST(:b AS uuid[]))"
                " AS t(p, e, b)),"
                " new AS (INSERT INTO event_ledger (project_id, event_id, batch_id)"
                " SELECT p, e, b FROM t ORDER BY p, e, b ON CONFLICT DO NOTHING"
                " RETURNING project_id, event_id, batch_id)"
                " SELECT t.b::text, t.e::text FROM t LEFT JOIN new"
                " ON new.project_id = t.p AND new.event_id = t.e AND new.batch_id = t.b WHERE new.event_id IS NULL",
                p=_repeated([(r.project_id, len(r.event_ids)) for r in open_requests]),
                e="{" + ",".join(",".join(r.event_ids) for r in open_requests) + "}",
                b=_repeated([(r.batch_id, len(r.event_ids)) for r in open_requests])):
            lost.setdefault(batch_id, set()).add(event_id)
    for request in open_requests:
        mine = lost.get(request.batch_id, set())
        if request.batch_id not in fresh and mine:
            # An earlier delivery of this batch may have inserted some of these rows itself.
            mine -= {row[0] for row in conn.run(
                "SELECT event_id::text FROM event_ledger WHERE project_id = CAST(:p AS uuid)"
                " AND event_id = ANY(CAST(:e AS uuid[])) AND batch_id = CAST(:b AS uuid)",
                p=request.project_id, e=_uuid_array(sorted(mine)), b=request.batch_id)}
        claims[request.batch_id] = _Claim(True, request.batch_id in fresh, None, frozenset(mine))
    for request in requests:
        claims.setdefault(request.batch_id, _Claim(True, request.batch_id in fresh))  # a batch of no events
    return claims


def _repeated(values: Sequence[tuple[str, int]]) -> str:
    """An array literal of each value repeated its count of times."""
    return "{" + ",".join(",".join([value] * count) for value, count in values if count) + "}"


class BatchLocks:
    """Postgres advisory locks on batch ids (and their projects' locks, shared),
    held on one session of their own from a batch's claim to its ``done``
    mark. Only tried, never waited for. If the session breaks, its locks are
    gone with it: the batches in hand finish (their steps are idempotent) and
    the next call opens a new one."""

    LOCK = ("SELECT b, pg_try_advisory_lock(hashtextextended(k, 0)), pg_try_advisory_lock_shared("
            "hashtextextended(pk, 0)) FROM unnest(CAST(:b AS text[]), CAST(:k AS text[]), CAST(:pk AS text[]))"
            " AS t(b, k, pk)")
    UNLOCK = ("SELECT CASE WHEN m THEN pg_advisory_unlock(hashtextextended(k, 0)) END,"
              " CASE WHEN p THEN pg_advisory_unlock_shared(hashtextextended(pk, 0)) END"
              " FROM unnest(CAST(:k AS text[]), CAST(:pk AS text[]), CAST(:m AS boolean[]), CAST(:p AS boolean[]))"
              " AS t(k, pk, m, p)")

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def try_acquire(self, batches: Sequence[tuple[str, str]]) -> set[str]:
        """The batch ids (of (batch id, project id) pairs) whose both locks were taken."""
        rows = self._run(self.LOCK, b=_uuid_array([b for b, _ in batches]),
                         k=_array([f"persist:{b}" for b, _ in batches]),
                         pk=_array([project_lock(p) for _, p in batches]))
        taken = {row[0] for row in rows if row[1] and row[2]}
        partly = [(row[0], row[1], row[2]) for row in rows if not (row[1] and row[2]) and (row[1] or row[2])]
        if partly:  # one of the two: give it back
            projects = dict(batches)
            self._unlock([(b, projects[b], mine, project) for b, mine, project in partly])
        return taken

    def release(self, batches: Sequence[tuple[str, str]]) -> None:
        """Never fails: if the session broke, its locks went with it."""
        if batches:
            with suppress(Unavailable):
                self._unlock([(b, p, True, True) for b, p in batches])

    def _unlock(self, locks: Sequence[tuple[str, str, bool, bool]]) -> None:
        self._run(self.UNLOCK, k=_array([f"persist:{b}" for b, _, _, _ in locks]),
                  pk=_array([project_lock(p) for _, p, _, _ in locks]),
                  m=_array(["t" if m else "f" for _, _, m, _ in locks]),
                  p=_array(["t" if p else "f" for _, _, _, p in locks]))

    def _run(self, sql: str, **params: str) -> list[list[Any]]:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self.db.session()
                return self._conn.run(sql, **params) or []
            except (InterfaceError, OSError, DatabaseError) as exc:
                self.close()
                raise Unavailable(f"postgres: batch locks unavailable: {type(exc).__name__}", 1) from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.db.end_session(conn)
