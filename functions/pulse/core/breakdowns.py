"""Breakdowns: ``breakdown=<field>`` (repeatable, at most two; the fields of
segments: ``event_type``, ``user_id``, ``session_id``, ``path``, ``country``,
``properties.<key>``, ``person.<key>``) splits an answer by those fields'
values. Pure: parameters in, SQL fragments and bound parameters out; every
kernel that takes a breakdown builds it from here.

Values
    A row's ``breakdown`` is the list of its values, one per field. A column's
    value is its text; a property's (``properties.<key>`` of the event,
    ``person.<key>`` of the person, as the person's newest properties hold it)
    is its string, or the JSON text of any other value (``2``, ``true``),
    which is what a segment on that field matches. A missing value, a JSON
    ``null`` and the empty string are all ``"$none"``.

The top values
    The value lists are ranked by users (distinct persons among the rows the
    answer counts, over the whole range), ties by the values as text
    (ascending); the first ``breakdown_limit`` (default 10, 1–100) are kept
    and every other one is counted as ``"$other"`` (a list of ``"$other"``,
    one per field): its events summed, its persons counted once however many
    of the other values they have. Rows are ordered by that rank within each
    bucket, ``"$other"`` last. A real value spelled ``$none`` or ``$other`` is
    not told apart from these.

Two kinds of kernel
    - Event-level (events, active users, top events): a person may have
      several values (two countries, several event types), so a person counts
      once in each value they have. ``split_query`` counts per (key, value)
      and per value in one pass (``GROUPING SETS``); the kept values are
      ranked from it, and ``others_query`` counts the ``"$other"`` rows when
      there are more values (a second pass, persons counted once). A split
      with too many rows for one answer is ranked in ClickHouse (``ranked``:
      ``uniqExact`` states, those of the other values merged).
    - Person-level (funnels, retention): the kernel gives each person one
      value (funnels: that of the person's first event that can start the
      funnel; retention: of their first event ever; ``person.<key>`` the
      person's own), so the values split the persons; ``ranked_persons``
      ranks them by how many persons each has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulse.core.filters import PROPERTY_KEY, SEGMENT_COLUMNS
from pulse.errors import InvalidInput

NONE = "$none"
OTHER = "$other"
MAX_FIELDS = 2
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


@dataclass(frozen=True)
class Breakdown:
    fields: tuple[str, ...]
    limit: int = DEFAULT_LIMIT

    @property
    def columns(self) -> frozenset[str]:
        """The fields that are columns of the events table (a rollup may keep them)."""
        return frozenset(f for f in self.fields if f in SEGMENT_COLUMNS)

    @property
    def by_person(self) -> bool:
        return any(f.startswith("person.") for f in self.fields)

    @property
    def by_property(self) -> bool:
        return any(f.startswith("properties.") for f in self.fields)

    @property
    def others(self) -> list[str]:
        return [OTHER] * len(self.fields)


def check_field(field: Any, name: str = "breakdown") -> str:
    if not isinstance(field, str):
        raise InvalidInput.field(name, "must be a field name")
    if field in SEGMENT_COLUMNS:
        return field
    prefix, dot, key = field.partition(".")
    if dot and prefix in ("properties", "person") and PROPERTY_KEY.match(key):
        return field
    raise InvalidInput.field(name, f"{field[:80]!r} is not a field: use one of " + ", ".join(SEGMENT_COLUMNS)
                             + ", properties.<key> or person.<key> (key: [A-Za-z0-9_.-]{1,64})")


def check_limit(raw: Any) -> int:
    if isinstance(raw, str) and raw.isdigit() and len(raw) <= 4:
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_LIMIT:
        raise InvalidInput.field("breakdown_limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return raw


def make(fields: Sequence[Any], limit: Any = None) -> Breakdown | None:
    if not fields:
        if limit is not None:
            check_limit(limit)
        return None
    if len(fields) > MAX_FIELDS:
        raise InvalidInput.field("breakdown", f"at most {MAX_FIELDS} fields")
    checked = tuple(check_field(f) for f in fields)
    if len(set(checked)) != len(checked):
        raise InvalidInput.field("breakdown", "names the same field twice")
    return Breakdown(checked, DEFAULT_LIMIT if limit is None else check_limit(limit))


def parse(params: Mapping[str, Sequence[str]]) -> Breakdown | None:
    """``breakdown`` (repeatable) and ``breakdown_limit`` from query parameters."""
    limits = params.get("breakdown_limit") or []
    if len(limits) > 1:
        raise InvalidInput.field("breakdown_limit", "may be given once")
    return make(list(params.get("breakdown") or []), limits[0] if limits else None)


def parse_body(body: Mapping[str, Any]) -> Breakdown | None:
    """``breakdown`` (a field or a list of them) and ``breakdown_limit`` of a JSON body."""
    raw = body.get("breakdown")
    fields = [] if raw is None else [raw] if isinstance(raw, str) else raw
    if not isinstance(fields, list):
        raise InvalidInput.field("breakdown", "must be a field or a list of at most 2 fields")
    return make(fields, body.get("breakdown_limit"))


# SQL ------------------------------------------------------------------------

def json_value(column: str, key: str) -> str:
    """The text of property ``key`` (a bound parameter's name) of JSON ``column``:
    a string as is, anything else as its JSON text; '' when missing or null."""
    kind = f"JSONType({column}, {{{key}:String}})"
    return (f"if({kind} = 'String', JSONExtractString({column}, {{{key}:String}}),"
            f" if({kind} = 'Null', '', JSONExtractRaw({column}, {{{key}:String}})))")


def named(expr: str) -> str:
    return f"coalesce(nullIf({expr}, ''), '{NONE}')"


def event_exprs(bd: Breakdown, prefix: str = "bd") -> tuple[dict[int, str], dict[str, Any]]:
    """The value expression of each field read from the row itself (columns,
    event properties), by the field's index, and their parameters."""
    out: dict[int, str] = {}
    params: dict[str, Any] = {}
    for index, field in enumerate(bd.fields):
        if field in SEGMENT_COLUMNS:
            out[index] = named(f"toString({SEGMENT_COLUMNS[field]})")
        elif field.startswith("properties."):
            params[f"{prefix}_k{index}"] = field.partition(".")[2]
            out[index] = named(json_value("properties", f"{prefix}_k{index}"))
    return out, params


def event_values(bd: Breakdown, prefix: str = "bd") -> tuple[str, dict[str, Any]]:
    """``, <expr> AS bd<i>`` for each field read from the row itself, to add to
    the SELECT of the rows being split ('' when there is none)."""
    exprs, params = event_exprs(bd, prefix)
    return "".join(f", {expr} AS bd{index}" for index, expr in exprs.items()), params


def with_person_values(rows: str, bd: Breakdown, project_param: str,
                       prefix: str = "bd") -> tuple[str, dict[str, Any]]:
    """``rows`` (selecting ``person`` and the event fields' ``bd<i>``) with the
    person fields' ``bd<i>`` added: the person's newest properties
    (``person_properties``) joined on the person key."""
    if not bd.by_person:
        return rows, {}
    params: dict[str, Any] = {}
    picked = []
    added = []
    for index, field in enumerate(bd.fields):
        if field.startswith("person."):
            params[f"{prefix}_pk{index}"] = field.partition(".")[2]
            picked.append(f"{json_value('properties', f'{prefix}_pk{index}')} AS bd{index}")
            added.append(f"{named(f'pp.bd{index}')} AS bd{index}")
    sql = (f"SELECT r.*, {', '.join(added)} FROM ({rows}) AS r LEFT ANY JOIN"
           f" (SELECT person_key, {', '.join(picked)} FROM person_properties FINAL"
           f" WHERE project_id = {{{project_param}:UUID}}) AS pp ON r.person = pp.person_key")
    return sql, params


def value_list(bd: Breakdown) -> str:
    return "[" + ", ".join(f"bd{i}" for i in range(len(bd.fields))) + "]"


SPLIT_CAP = 50_000  # rows of a one-pass split the runner takes; beyond, the split is ranked in ClickHouse


def split_query(rows: str, key: str, bd: Breakdown) -> str:
    """Event-level, one pass: ``rows`` selects ``key`` (as ``b``), ``person``,
    ``n`` (events the row stands for) and every ``bd<i>``. The answer: per
    (``b``, value) and per value (``whole``), ``b, t, events, users, whole``;
    at most ``SPLIT_CAP`` + 1 rows (more: use ``ranked``)."""
    return (f"SELECT {key}, {value_list(bd)} AS t, sum(n), uniqExact(person), toUInt8(grouping({key})) AS whole"
            f" FROM ({rows}) GROUP BY GROUPING SETS (({key}, t), (t)) LIMIT {SPLIT_CAP + 1}")


def others_query(rows: str, key: str, bd: Breakdown) -> str:
    """Per ``b``, the events and persons of every value not among the kept ones
    (bound as ``bd_top``): the ``"$other"`` rows."""
    return (f"SELECT {key}, sum(n), uniqExact(person) FROM ({rows})"
            f" WHERE NOT has({{bd_top:Array(Array(String))}}, {value_list(bd)}) GROUP BY {key}")


def top(rows: Sequence[tuple[Any, ...]], bd: Breakdown) -> list[list[str]]:
    """The kept values, in rank order, from ``split_query``'s per-value rows."""
    totals = [(int(users), list(t)) for _, t, _, users, whole in rows if whole]
    return [t for _, t in sorted(totals, key=lambda r: (-r[0], r[1]))[:bd.limit]]


def assemble(rows: Sequence[tuple[Any, ...]], kept: list[list[str]], others: Sequence[tuple[Any, ...]],
             bd: Breakdown) -> list[tuple[Any, list[str], int, int, int]]:
    """``(b, breakdown, rank, events, users)`` from ``split_query``'s rows of the
    kept values and ``others_query``'s rows."""
    rank = {tuple(t): i + 1 for i, t in enumerate(kept)}
    out = [(b, list(t), rank[tuple(t)], int(e), int(u)) for b, t, e, u, whole in rows
           if not whole and tuple(t) in rank]
    out += [(b, bd.others, bd.limit + 1, int(e), int(u)) for b, e, u in others]
    return out


def ranked(rows: str, keys: Sequence[str], bd: Breakdown) -> str:
    """Event-level: ``rows`` selects ``keys``, ``person``, ``n`` (events the row
    stands for) and every ``bd<i>``. The answer: per key and kept value (or
    ``"$other"``), ``keys..., breakdown, rank, events, users``."""
    k = ", ".join(keys)
    limit = bd.limit
    return (
        f"SELECT {k}, if(vrank <= {limit}, t, {bd.others!r}) AS breakdown, least(vrank, {limit + 1}) AS rank,"
        " sum(e) AS events, uniqExactMerge(s) AS users FROM ("
        f" SELECT {k}, t, e, s, whole, max(if(whole = 1, r, 0)) OVER (PARTITION BY t) AS vrank FROM ("
        f"  SELECT {k}, t, e, s, whole,"
        "   row_number() OVER (PARTITION BY whole ORDER BY finalizeAggregation(s) DESC, t ASC) AS r FROM ("
        f"   SELECT {k}, {value_list(bd)} AS t, sum(n) AS e, uniqExactState(person) AS s,"
        f"    toUInt8(grouping({keys[0]})) AS whole FROM ({rows}) GROUP BY GROUPING SETS (({k}, t), (t)))))"
        f" WHERE whole = 0 GROUP BY {k}, breakdown, rank")


def ranked_persons(rows: str, bd: Breakdown) -> str:
    """Person-level: ``rows`` has one row per person with every ``bd<i>``; the
    same rows with ``breakdown`` (the value kept, or ``"$other"``) and
    ``rank``, values ranked by their persons."""
    limit = bd.limit
    return (f"SELECT *, if(vrank <= {limit}, t, {bd.others!r}) AS breakdown, least(vrank, {limit + 1}) AS rank"
            " FROM (SELECT *, dense_rank() OVER (ORDER BY vc DESC, t ASC) AS vrank FROM ("
            f" SELECT *, count() OVER (PARTITION BY t) AS vc FROM (SELECT *, {value_list(bd)} AS t FROM ({rows}))))")
