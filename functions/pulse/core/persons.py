"""Persons: what a person is, how identity links chain, when a merge applies,
and the one way every query turns an identifier into a person.

What a person is
    Identifiers (``user_id`` and ``anonymous_id`` values, one namespace, as the
    events' ``actor`` column already treats them) that identity links joined.
    An identifier no link names is a person of its own. Each person has a
    *primary* identifier: its person key in ClickHouse is the ``actor_key``
    that identifier already has (``sipHash128``), and its ``person_id`` is
    ``uuid5(project_id, primary)``, so both are stable and need no lookup for
    the many persons of one identifier.

Links (``operations``)
    ``$identify`` (Segment ``identify``, PostHog ``$identify`` with
    ``$anon_distinct_id``, native ``POST /v1/identify``) links its
    ``anonymous_id`` to its ``user_id``; ``$alias`` (Segment ``alias``:
    ``previousId`` → ``userId``) and ``$create_alias`` (PostHog: ``alias`` →
    ``distinct_id``) do the same; ``$merge_dangerously`` (PostHog) and an
    identify with ``"$force": true`` link even two identified persons. A
    person is *identified* once it has been the user side of a link or an
    identify call named it. ``$set``/``$set_once`` in any event's properties,
    and an identify's traits, set person properties.

When a merge applies (``Identities.link``), for persons PA (the anonymous
side) and PU (the user side):
    - the same person: nothing to do;
    - both identified and not forced: refused (recorded in
      ``person_refusals``, counted in ``pulse_person_links_total``); the event
      is still stored as an event;
    - otherwise one absorbs the other: the identified one survives (PU when
      both or neither are: a forced merge keeps the user side), keeping its
      primary; the other's identifiers, properties it lacks and identification
      move to it. So ``a → b`` then ``b → c`` chains into one person, whatever
      order the events of a, b and c arrive in.
    Links apply in the order persist applies them (a batch's in event time
    order); the order only matters when two links conflict.

Exactness at query time
    Events and every rollup keep the actor key computed at insert, never
    rewritten. The ClickHouse table ``person_links`` (a Join table: an
    in-memory hash map, kept on disk) holds, for each identifier whose person's
    primary is another identifier, that primary's key: a flat map, one hop
    for any chain. Every unique-user figure counts ``PERSON`` (below) instead
    of ``actor_key``; each row of the events table and of every rollup belongs
    to one actor, hence to exactly one person, so:
    - distinct persons among any set of rows is ``uniqExact(PERSON)``;
    - span tables (one row per actor and type/path): a person has an event in
      the range exactly when one of its identifiers' spans reaches into it
      (the span condition holds per identifier), so the distinct ``PERSON``
      among the reaching rows is exact;
    - retention groups by ``PERSON`` (first event ever: the minimum over its
      identifiers); funnels run ``windowFunnel`` per ``PERSON`` (the person's
      events across identifiers in time order).
    Events that arrive late or out of order need nothing: they resolve when
    read. A project with no overrides counts ``actor_key`` as before
    (``Resolver``), which gives the same answer without the per-row lookup.

When a link is visible
    persist applies a batch's identity operations after inserting its events
    and before marking it done (pulse.core.persisting): one Postgres
    transaction under the project's identity lock, then the overrides and
    person properties of every person the batch touched are written to
    ClickHouse under the same lock, then the batch is done. Once the batch
    that carries a link is persisted, every query reflects the link.

On a ClickHouse cluster (docs/scaling.md)
    Each shard's part of a query looks links up in the ``person_links`` of the
    node that runs it, so every node must have every link before the batch is
    done. A Join table is not replicated: each node keeps its own, and
    ``ClickHouse.insert_on_every_node`` writes the rows on each node, one
    synchronous insert per node (node k of ``clusterAllReplicas`` by
    ``insert_shard_id = k``; the nodes are counted by asking every one of
    them). Person properties are a replicated table every node has: their
    insert waits for every replica (``insert_quorum`` = the number of nodes).
    A node that does not answer makes the write ``Unavailable``: persist
    answers 503, Kafka redelivers, and the redelivery rewrites the current
    links and properties of the batch's persons from Postgres on every node
    (the crash notes below), so a node that missed a write is written again
    before any batch that touches those persons is done (until then a query
    may see that batch's links on some nodes and not on others, as it may see
    a batch's events before the batch is done). While a node is
    down, batches that carry identity operations wait (those without go on:
    they write no links); that is the price of exact figures, as it is for
    events on a shard of two replicas (``insert_quorum = 'auto'``).
    Deletions take the cluster forms of their statements (pulse.core.erasure);
    ``resync_links`` (after ``pulse migrate``, which also runs it when the
    nodes' links differ: a node added, or one that lost its disk) writes
    through the same path. Writes are upserts (the last row of a key counts),
    so a node written twice, or one written before a failure on another,
    holds the same links after the next write of those persons.

    Designs weighed (bench/identity_bench.py measures both; docs/scaling.md
    has the figures): (a) this one, the Join table written on every node: the
    read side is unchanged (one node and a cluster run the same SQL), a write
    costs one insert per node (a network round trip each on a real cluster);
    (b) a replicated table of links read through a dictionary
    (``dictGetOrNull``) on every node: replication copies the rows, but a
    dictionary is only exact after a reload, which re-reads every link of
    every project on every node for each identity batch (a cost that grows
    with the store, not with the batch), and deletions need the same reload.
    A Join table rebuilt on each node from a replicated table costs the same
    rebuild. Measured on 1M events with 30k links (one chDB, shared machine):
    the dictionary lookup took 1.44-1.47x the CPU of the Join table's in
    unique-person queries; one reload took 2.4 ms of CPU with 30k links and
    47 ms (184 ms wall) with 300k, per node and per identity batch; writing
    10 links on every node took 3.1, 7.7 and 18.8 ms of CPU for 1, 2 and 4
    nodes (what a real cluster adds, a network round trip per node, is not
    in these figures).

For query builders (stats, insights)
    ``who = resolver(ch, project_id)`` once per query, then ``who.key`` wherever
    the SQL means "the user" of a row of ``events`` or of a rollup (it needs
    the row's ``project_id`` and ``actor_key``): ``uniqExact(who.key)``,
    ``GROUP BY who.key`` for per-person state (funnels, paths, stickiness,
    lifecycle, cohorts). Rows of one identifier before and after a link are
    then one person's rows. ``members_condition`` selects one person's rows
    without a per-row lookup; ``person.<key>`` segments come from
    pulse.core.filters. A person's key is also what ``person_id`` is derived
    from (``uuid5(project_id, primary)``).

Crash notes (pulse.storage.persons applies them)
    - before the transaction commits: nothing applied; a redelivery applies.
    - after it commits, before or during the ClickHouse writes: the batch is
      in ``person_batches``, so a redelivery does not apply its operations
      again; it rewrites the current overrides and properties of every person
      its identifiers belong to now, from Postgres, under the lock.
    - after the writes, before the batch is done: the same rewrite, same rows.
    Two batches at once take the lock in turn, so the ClickHouse writes follow
    the commits and the last row written per key is the newest state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pulse.core.events import RowView

OVERRIDES = "person_links"
# The Join table's key for an identifier of a project (migration 0022).
LINK_KEY = "bitXor({actor}, reinterpretAsUInt128({project}))"
# The person an event row belongs to: its actor's primary's key, or its own.
PERSON = (f"ifNull(joinGetOrNull('{OVERRIDES}', 'person_key',"
          f" {LINK_KEY.format(actor='actor_key', project='project_id')}), actor_key)")
ACTOR = "actor_key"
# ``PERSON`` in a query about one project, bound as ``f_project`` (every stats query binds it
# and reads that project's rows only): the link key's project part is then computed once, not
# per row (unique persons over type_spans' 930k rows: ~40 -> ~35 ms).
PROJECT_PERSON = (f"ifNull(joinGetOrNull('{OVERRIDES}', 'person_key',"
                  f" {LINK_KEY.format(actor='actor_key', project='{f_project:UUID}')}), actor_key)")
# Whether a project has any identifier resolving to another (then PERSON is needed).
HAS_OVERRIDES = f"SELECT count() FROM {OVERRIDES} WHERE project_id = {{project:UUID}}"
# ClickHouse expression for the key of an identifier given as text.
KEY_OF = "reinterpretAsUInt128(sipHash128({}))"


def members_condition(project_param: str, id_param: str) -> str:
    """Rows whose actor belongs to the person of the identifier bound as
    ``id_param``: its identifiers' keys read from the overrides map (no
    per-row lookup)."""
    key = KEY_OF.format(f"{{{id_param}:String}}")
    link = LINK_KEY.format(actor=key, project=f"{{{project_param}:UUID}}")
    person = f"ifNull(joinGetOrNull('{OVERRIDES}', 'person_key', {link}), {key})"
    return (f"actor_key IN (SELECT {person} UNION ALL SELECT actor_key FROM {OVERRIDES}"
            f" WHERE project_id = {{{project_param}:UUID}} AND person_key = {person})")

IDENTIFY = "$identify"
ALIAS = "$alias"  # Segment alias: properties.previous_id -> user_id
CREATE_ALIAS = "$create_alias"  # PostHog: properties.alias -> distinct_id (user_id)
MERGE_DANGEROUSLY = "$merge_dangerously"  # PostHog: as $create_alias, even between identified persons
LINK_TYPES = frozenset({IDENTIFY, ALIAS, CREATE_ALIAS, MERGE_DANGEROUSLY})
FORCE = "$force"


def person_id(project_id: str, primary: str) -> str:
    return str(uuid.uuid5(uuid.UUID(project_id), primary))


# Operations -----------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    anonymous_id: str
    user_id: str
    force: bool = False


@dataclass(frozen=True)
class Identify:
    user_id: str


@dataclass(frozen=True)
class SetProperties:
    distinct_id: str
    set: Mapping[str, Any]
    set_once: Mapping[str, Any]


Operation = Link | Identify | SetProperties


def _object(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def operations(rows: Iterable[RowView]) -> list[Operation]:
    """The identity operations normalized event rows carry, in event time order
    (a stable sort: rows of one moment keep their order). Pure."""
    ops: list[Operation] = []
    for row in sorted(rows, key=lambda r: r["occurred_at"]):
        kind = row["event_type"]
        text = row["properties"]
        if kind not in LINK_TYPES and "$set" not in text:
            continue
        try:
            props = _object(orjson.loads(text))
        except orjson.JSONDecodeError:
            props = {}
        user, anonymous = row["user_id"], row["anonymous_id"]
        actor = user or anonymous
        if kind == IDENTIFY and user:
            if anonymous and anonymous != user:
                ops.append(Link(anonymous, user, props.get(FORCE) is True))
            ops.append(Identify(user))
        elif kind in (ALIAS, CREATE_ALIAS, MERGE_DANGEROUSLY) and user:
            other = props.get("previous_id" if kind == ALIAS else "alias")
            other = str(other) if isinstance(other, str | int) and not isinstance(other, bool) else ""
            if other and other != user and len(other) <= 256:
                ops.append(Link(other, user, kind == MERGE_DANGEROUSLY))
            ops.append(Identify(user))
        to_set = _object(props.get("$set"))
        to_set_once = _object(props.get("$set_once"))
        if kind == IDENTIFY and "$set" not in props and "$set_once" not in props:
            to_set = {k: v for k, v in props.items() if not k.startswith("$")}  # Segment traits
        if actor and (to_set or to_set_once):
            ops.append(SetProperties(actor, to_set, to_set_once))
    return ops


def identifiers(ops: Sequence[Operation]) -> list[str]:
    """Every identifier the operations name, once, in order."""
    seen: dict[str, None] = {}
    for op in ops:
        for name in ((op.anonymous_id, op.user_id) if isinstance(op, Link) else
                     (op.user_id,) if isinstance(op, Identify) else (op.distinct_id,)):
            seen.setdefault(name, None)
    return list(seen)


# The model ------------------------------------------------------------------

@dataclass
class Person:
    person_id: str
    primary: str
    identified: bool
    properties: dict[str, Any]
    members: set[str]
    stored: bool = True  # has a row in Postgres
    changed: bool = False


@dataclass
class Outcome:
    changed: list[Person] = field(default_factory=list)  # persons to write (new or updated)
    absorbed: list[Person] = field(default_factory=list)  # stored persons merged into another
    refused: list[Link] = field(default_factory=list)
    merged: int = 0


class Identities:
    """The persons some operations concern, as loaded from Postgres, and the
    operations applied to them in memory (pure; pulse.storage.persons loads and
    writes)."""

    def __init__(self, project_id: str, persons: Iterable[Person]) -> None:
        self.project_id = project_id
        self.by_id: dict[str, Person] = {}
        self._absorbed: list[Person] = []
        self.refused: list[Link] = []
        self.merged = 0
        for person in persons:
            for member in person.members:
                self.by_id[member] = person

    def person(self, distinct_id: str) -> Person:
        found = self.by_id.get(distinct_id)
        if found is None:
            found = Person(person_id(self.project_id, distinct_id), distinct_id, False, {}, {distinct_id},
                           stored=False)
            self.by_id[distinct_id] = found
        return found

    def apply(self, ops: Iterable[Operation]) -> Outcome:
        for op in ops:
            if isinstance(op, Link):
                self.link(op)
            elif isinstance(op, Identify):
                self.identify(op.user_id)
            else:
                self.set_properties(op)
        persons = {id(p): p for p in self.by_id.values()}.values()
        return Outcome([p for p in persons if p.changed], [p for p in self._absorbed if p.stored],
                       self.refused, self.merged)

    def identify(self, user_id: str) -> None:
        person = self.person(user_id)
        if not person.identified:
            person.identified = person.changed = True

    def link(self, op: Link) -> bool:
        """Apply one link; False when refused (both identified, not forced)."""
        anonymous, user = self.person(op.anonymous_id), self.person(op.user_id)
        if anonymous is user:
            return True
        if anonymous.identified and user.identified and not op.force:
            self.refused.append(op)
            return False
        survivor, absorbed = (anonymous, user) if anonymous.identified and not user.identified else (user, anonymous)
        for key, value in absorbed.properties.items():
            survivor.properties.setdefault(key, value)
        survivor.members |= absorbed.members
        survivor.identified = survivor.changed = True
        for member in absorbed.members:
            self.by_id[member] = survivor
        absorbed.changed = False
        self._absorbed.append(absorbed)
        self.merged += 1
        return True

    def set_properties(self, op: SetProperties) -> None:
        person = self.person(op.distinct_id)
        before = dict(person.properties)
        for key, value in op.set_once.items():
            person.properties.setdefault(key, value)
        person.properties.update(op.set)
        if person.properties != before:
            person.changed = True


def overrides(persons: Iterable[Person]) -> list[tuple[str, str]]:
    """(identifier, primary) for every identifier that resolves to another."""
    return [(member, p.primary) for p in persons for member in sorted(p.members) if member != p.primary]


# Query side -----------------------------------------------------------------

@dataclass(frozen=True)
class Resolver:
    """How a query about one project names the person of a row: ``PROJECT_PERSON``,
    or ``actor_key`` for a project where no identifier resolves to another (the
    same answer, without the per-row lookup). ``resolver(ch, project_id)`` asks;
    builders use ``key``."""

    key: str = PROJECT_PERSON

    @property
    def resolving(self) -> bool:
        return self.key != ACTOR


ACTORS = Resolver(ACTOR)
PERSONS = Resolver(PROJECT_PERSON)


class _Rows(Protocol):
    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


def resolver(ch: _Rows, project_id: str) -> Resolver:
    """The resolver for a query about this project, asked of ClickHouse each
    time (a read of the in-memory overrides map): a link persisted a moment
    ago is seen."""
    return PERSONS if ch.rows(HAS_OVERRIDES, {"project": project_id})[0][0] else ACTORS
