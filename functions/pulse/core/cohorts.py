"""Cohorts: named sets of persons, saved per project, usable as a filter on
every stats endpoint (``cohort=<id>``; ``"cohort"`` in a funnel body), ANDed
with the segments. Pure: request bodies in, cohort values and SQL out;
pulse.storage.cohorts keeps them.

Kinds
    - static, from a list of identifiers (``users``: any ``user_id`` or
      ``anonymous_id``): the persons those identifiers belong to *at query
      time* (a link made later brings the linked identifiers' events in);
    - static, from a funnel step (``funnel``: a funnel body with ``step`` and
      ``status``, as ``POST /v1/stats/funnel/people`` takes): the persons
      converted (dropped) at that step when the cohort is made, kept as their
      person keys (a later merge follows them through the overrides);
    - behavioural (``definition: {event_type, min_count, days, segment?,
      negate?}``): the persons with at least ``min_count`` events of that type
      (matching the segments, bots left out) from ``days`` days before the
      query up to the query's moment; with ``negate``, the persons without.
      Evaluated exactly at each query, over the events table.

As a filter a cohort is one term over any table with ``project_id`` and
``actor_key`` (events, the per-actor rollups): the row's person
(pulse.core.persons) is, or is not, in the set.

Storage (crash notes)
    Members of a static cohort go to ClickHouse (``cohort_members``, keyed by
    project, cohort and actor key) before the cohort's row is committed in
    Postgres (``cohorts``, the truth: a cohort exists when its row does). A
    crash in between leaves member rows under an id nothing names, never a
    cohort without its members. Deleting a cohort deletes its row; its member
    rows are then unreachable, and removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pulse.core.filters import Segment, check_text, parse_segments, segment_condition
from pulse.core.persons import PERSON
from pulse.core.projects import check_uuid
from pulse.errors import InvalidInput

MAX_NAME = 200
MAX_USERS = 10_000
MAX_ID_CHARS = 256
MAX_DAYS = 731
MAX_MIN_COUNT = 1_000_000
# A stored key resolved to its person now (the key may have been absorbed since): the same lookup.
RESOLVED = PERSON


@dataclass(frozen=True)
class Behaviour:
    event_type: str
    min_count: int
    days: int
    segments: tuple[Segment, ...] = ()
    negate: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"event_type": self.event_type, "min_count": self.min_count, "days": self.days,
                "segment": [f"{s.field}:{s.value}" for s in self.segments], "negate": self.negate}


@dataclass(frozen=True)
class StaticCohort:
    """A filter: the persons of the cohort's stored member keys."""

    cohort_id: str

    def term(self, prefix: str, project_param: str) -> tuple[str, dict[str, Any]]:
        return (f"{PERSON} IN (SELECT {RESOLVED} FROM cohort_members WHERE project_id = {{{project_param}:UUID}}"
                f" AND cohort_id = {{{prefix}_id:UUID}})", {f"{prefix}_id": self.cohort_id})


@dataclass(frozen=True)
class BehaviouralCohort:
    """A filter: the persons who did (or, negated, did not) the behaviour in the
    ``days`` before ``now`` (the moment the query was asked)."""

    behaviour: Behaviour
    now: datetime

    def term(self, prefix: str, project_param: str) -> tuple[str, dict[str, Any]]:
        b = self.behaviour
        parts, params = segment_condition(b.segments, f"{prefix}s", project_param)
        params.update({f"{prefix}_type": b.event_type, f"{prefix}_min": b.min_count,
                       f"{prefix}_since": (self.now - timedelta(days=b.days)).astimezone(UTC).replace(tzinfo=None),
                       f"{prefix}_now": self.now.astimezone(UTC).replace(tzinfo=None)})
        matching = " AND ".join([f"project_id = {{{project_param}:UUID}}", "bot = 0",
                                 f"event_type = {{{prefix}_type:String}}",
                                 f"occurred_at >= {{{prefix}_since:DateTime64(3, 'UTC')}}",
                                 f"occurred_at <= {{{prefix}_now:DateTime64(3, 'UTC')}}", *parts])
        # GLOBAL: on a cluster the set is made once, over every shard, and sent to each
        return (f"{PERSON} GLOBAL {'NOT ' if b.negate else ''}IN (SELECT {PERSON} AS p FROM events WHERE {matching}"
                f" GROUP BY p HAVING count() >= {{{prefix}_min:UInt32}})", params)


@dataclass(frozen=True)
class NewCohort:
    """A parsed ``POST /v1/cohorts``: exactly one of ``users``, ``funnel``, ``behaviour``."""

    name: str
    users: tuple[str, ...] | None = None
    funnel: Mapping[str, Any] | None = None
    behaviour: Behaviour | None = None

    @property
    def kind(self) -> str:
        return "behavioural" if self.behaviour is not None else "static"


def _int(raw: Any, name: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise InvalidInput.field(name, f"must be an integer from {low} to {high}")
    return raw


def parse_behaviour(raw: Any) -> Behaviour:
    if not isinstance(raw, Mapping) or not {"event_type", "min_count", "days"} <= set(raw) \
            or set(raw) - {"event_type", "min_count", "days", "segment", "negate"}:
        raise InvalidInput.field("definition", "must be {event_type, min_count, days, segment?, negate?}")
    event_type = raw["event_type"]
    if not isinstance(event_type, str) or not 1 <= len(check_text("definition.event_type", event_type)) <= 128:
        raise InvalidInput.field("definition.event_type", "must be 1 to 128 characters")
    segment = raw.get("segment") or []
    if isinstance(segment, str):
        segment = [segment]
    if not isinstance(segment, list) or not all(isinstance(s, str) for s in segment):
        raise InvalidInput.field("definition.segment", "must be a list of '<field>:<value>' strings")
    try:
        segments = parse_segments(segment)
    except InvalidInput as exc:
        raise InvalidInput.field("definition.segment", exc.errors[0].message if exc.errors else exc.detail) from exc
    negate = raw.get("negate", False)
    if not isinstance(negate, bool):
        raise InvalidInput.field("definition.negate", "must be true or false")
    return Behaviour(event_type, _int(raw["min_count"], "definition.min_count", 1, MAX_MIN_COUNT),
                     _int(raw["days"], "definition.days", 1, MAX_DAYS), segments, negate)


def parse_new(body: Any) -> NewCohort:
    if not isinstance(body, Mapping):
        raise InvalidInput.field("body", "must be a JSON object")
    unknown = sorted(set(body) - {"name", "users", "funnel", "definition"})
    if unknown:
        raise InvalidInput.field(str(unknown[0])[:64], "is not a cohort field")
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(check_text("name", name).strip()) <= MAX_NAME:
        raise InvalidInput.field("name", f"must be 1 to {MAX_NAME} characters")
    given = [k for k in ("users", "funnel", "definition") if k in body]
    if len(given) != 1:
        raise InvalidInput.field("users", "give exactly one of users, funnel or definition")
    if "definition" in body:
        return NewCohort(name.strip(), behaviour=parse_behaviour(body["definition"]))
    if "funnel" in body:
        if not isinstance(body["funnel"], Mapping):
            raise InvalidInput.field("funnel", "must be a funnel body with step and status")
        return NewCohort(name.strip(), funnel=body["funnel"])
    users = body["users"]
    if not isinstance(users, list) or not 1 <= len(users) <= MAX_USERS:
        raise InvalidInput.field("users", f"must be a list of 1 to {MAX_USERS} identifiers")
    for index, user in enumerate(users):
        if not isinstance(user, str) or not 1 <= len(check_text("users", user)) <= MAX_ID_CHARS:
            raise InvalidInput.field(f"users[{index}]", f"must be an identifier of 1 to {MAX_ID_CHARS} characters")
    return NewCohort(name.strip(), users=tuple(dict.fromkeys(users)))


def parse_id(raw: Any, name: str = "cohort") -> str:
    return check_uuid(name, raw, "must be a cohort id")


def as_filter(cohort_id: str, kind: str, definition: Mapping[str, Any] | None,
              now: datetime | None = None) -> StaticCohort | BehaviouralCohort:
    """The filter a stored cohort stands for (``now``: the query's moment)."""
    if kind == "behavioural" and definition is not None:
        return BehaviouralCohort(parse_behaviour(definition), now or datetime.now(UTC))
    return StaticCohort(cohort_id)


# Members ----------------------------------------------------------------------

def members_from_ids(project_id: str, cohort_id: str, ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """INSERT of the identifiers' keys (resolved to persons at query time)."""
    return ("INSERT INTO cohort_members (project_id, cohort_id, actor_key)"
            " SELECT {p:UUID}, {c:UUID}, reinterpretAsUInt128(sipHash128(x)) FROM"
            " (SELECT arrayJoin({ids:Array(String)}) AS x)",
            {"p": project_id, "c": cohort_id, "ids": list(ids)})


def members_from_persons(project_id: str, cohort_id: str,
                         persons: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """INSERT of the person keys a query (selecting ``person`` first) finds."""
    sql, params = persons
    return (f"INSERT INTO cohort_members (project_id, cohort_id, actor_key) SELECT {{cohort_p:UUID}},"
            f" {{cohort_c:UUID}}, person FROM ({sql})", {**params, "cohort_p": project_id, "cohort_c": cohort_id})


def count_members(project_id: str, cohort_id: str) -> tuple[str, dict[str, Any]]:
    return ("SELECT uniqExact(actor_key) FROM cohort_members WHERE project_id = {p:UUID} AND cohort_id = {c:UUID}",
            {"p": project_id, "c": cohort_id})
