"""Stats queries over the events table, exact as API.md defines them.

Each function takes ``Filters`` (already validated), builds SQL whose values
are all bound parameters, and shapes the rows into the documented answer.
A user is a person (pulse.core.persons): the identifiers (``user_id``, else
``anonymous_id``: the materialized ``actor`` column) that identity links
joined. Unique users are ``uniqExact`` of the person key (``Resolver.key``:
the overrides lookup, or ``actor_key``, the actor's stored 128-bit SipHash, in
a project without links). Day, week (Monday) and month boundaries are those
of ``filters.tz``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload
from zoneinfo import ZoneInfo

from pulse import telemetry
from pulse.core import breakdowns
from pulse.core.breakdowns import Breakdown
from pulse.core.filters import PROPERTY_KEY, Filters, condition
from pulse.core.persons import Resolver, members_condition, resolver
from pulse.core.rollups import (
    EVENTS,
    PAGE_SPAN_FIELDS,
    PROJECT_HOURS,
    SPAN_REACHES,
    TYPE_SPAN_FIELDS,
    Source,
    actor_source,
    country_reaches,
    covers,
    page_source,
    session_parts,
    sessions_reaching,
    span_read,
    span_state,
    spans_hold,
    table_hours,
)
from pulse.errors import InvalidInput, NotFound
from pulse.storage.clickhouse import ClickHouse

MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
TIME_BUCKETS = {
    "hour": "toStartOfHour({time}, {{tz:String}})",
    "day": "toDate({time}, {{tz:String}})",
    "week": "toMonday({time}, {{tz:String}})",
    "month": "toStartOfMonth({time}, {{tz:String}})",
}
INTERVALS = ("day", "week", "month")
SUMMARY_TOP = 10
PROPERTY_VALUE = (
    "if(JSONHas(properties, {key:String}),"
    " if(JSONType(properties, {key:String}) = 'String', JSONExtractString(properties, {key:String}),"
    " JSONExtractRaw(properties, {key:String})), NULL)"
)


def query(endpoint: str, ch: ClickHouse, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with telemetry.QUERY_LATENCY.labels(endpoint).time(), \
            telemetry.span("clickhouse query", attributes={"endpoint": endpoint}):
        return ch.rows(sql, params)


A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
# Threads for the small queries one answer asks at once (``at_once``).
_AT_ONCE = ThreadPoolExecutor(max_workers=8, thread_name_prefix="query")


@overload
def at_once(a: Callable[[], A], b: Callable[[], B], /) -> tuple[A, B]: ...
@overload
def at_once(a: Callable[[], A], b: Callable[[], B], c: Callable[[], C], /) -> tuple[A, B, C]: ...
def at_once(*calls: Callable[[], Any]) -> tuple[Any, ...]:
    """Each call's result, the calls run at the same time: the first in this
    thread, the others in a shared pool, each in a copy of this thread's context
    (its trace). For the few-millisecond queries an answer needs before its main
    one (the resolver, the span tables' state, the counts per type): each waits
    mostly on its own planning, so together they take about the longest of
    them (top-events on the 10M-event bench: 2–3.5 ms less)."""
    later = [_AT_ONCE.submit(contextvars.copy_context().run, call) for call in calls[1:]]
    first = calls[0]()
    return (first, *(f.result() for f in later))


def percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


# Parameters ---------------------------------------------------------------

def parse_limit(values: Sequence[str], default: int = DEFAULT_LIMIT) -> int:
    if not values:
        return default
    if len(values) > 1 or not values[0].isdigit() or len(values[0]) > 6 or not 1 <= int(values[0]) <= MAX_LIMIT:
        raise InvalidInput.field("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(values[0])


def parse_group_by(value: str | None) -> str:
    group_by = value or "day"
    if group_by in TIME_BUCKETS or group_by == "event_type":
        return group_by
    if group_by.startswith("properties.") and PROPERTY_KEY.match(group_by[len("properties."):]):
        return group_by
    raise InvalidInput.field("group_by", "must be hour, day, week, month, event_type or properties.<key>"
                             " (key: [A-Za-z0-9_.-]{1,64})")


def parse_interval(value: str | None) -> str:
    interval = value or "day"
    if interval not in INTERVALS:
        raise InvalidInput.field("interval", "must be day, week or month")
    return interval


# Queries ------------------------------------------------------------------

def _bucket_text(value: Any, group_by: str, tz: str) -> Any:
    if group_by == "hour":
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(ZoneInfo(tz)).isoformat()
    if group_by in TIME_BUCKETS:
        return value.isoformat()
    return value


def _source(filters: Filters, rollups: bool, by_type: bool = False, bd: Breakdown | None = None) -> Source:
    """A rollup when one answers exactly (they hold no bots: with include_bots, the events table)."""
    if bd is not None and (bd.by_property or bd.columns - {"event_type", "country"}):
        return EVENTS
    needed = bd.columns if bd is not None else frozenset()
    return actor_source(filters, by_type, needed) if rollups and not filters.include_bots else EVENTS


def _split(src: Source, key: str, bd: Breakdown, who: Resolver, where: str,
           params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The rows of ``src`` to split by ``bd`` per ``key`` (an expression, named
    ``b``): ``b, person, n, bd<i>...`` (pulse.core.breakdowns)."""
    values, value_params = breakdowns.event_values(bd)
    rows = f"SELECT {key} AS b, {who.key} AS person, {src.weight} AS n{values} FROM {src.table} WHERE {where}"
    rows, person_params = breakdowns.with_person_values(rows, bd, "f_project")
    return rows, {**params, **value_params, **person_params}


def split(endpoint: str, ch: ClickHouse, rows: str, params: dict[str, Any],
          bd: Breakdown) -> list[tuple[Any, list[str], int, int, int]]:
    """``(b, breakdown, rank, events, users)``: one pass when it fits, a second
    for ``"$other"`` when there are more values than kept."""
    first = query(endpoint, ch, breakdowns.split_query(rows, "b", bd), params)
    if len(first) > breakdowns.SPLIT_CAP:
        return [(b, list(t), int(r), int(e), int(u))
                for b, t, r, e, u in query(endpoint, ch, breakdowns.ranked(rows, ["b"], bd), params)]
    kept = breakdowns.top(first, bd)
    values = sum(1 for r in first if r[4])
    others = query(endpoint, ch, breakdowns.others_query(rows, "b", bd), {**params, "bd_top": kept}) \
        if values > len(kept) else []
    return breakdowns.assemble(first, kept, others, bd)


def _by_bucket(rows: list[tuple[Any, ...]], time_order: bool) -> list[tuple[Any, ...]]:
    """Split rows (``b, breakdown, rank, events, ...``) in bucket order (time,
    or the bucket's events descending, then the bucket), then by rank."""
    if time_order:
        return sorted(rows, key=lambda r: (r[0], r[2]))
    totals: dict[Any, int] = {}
    for row in rows:
        totals[row[0]] = totals.get(row[0], 0) + int(row[3])
    return sorted(rows, key=lambda r: (-totals[r[0]], r[0] is None, r[0] or "", r[2]))


def events_query(filters: Filters, group_by: str, who: Resolver, bd: Breakdown | None = None,
                 rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """``b, events, users`` per bucket; with ``bd``: the rows to split (``split``)."""
    by_property = group_by.startswith("properties.")
    src = EVENTS if by_property else _source(filters, rollups, group_by == "event_type", bd)
    where, params = condition(filters, time_column=src.time)
    params["tz"] = filters.tz
    if group_by in TIME_BUCKETS:
        bucket = TIME_BUCKETS[group_by].format(time=src.time)
        if group_by == "hour":
            bucket = f"toTimeZone({bucket}, 'UTC')"
        order = "b"
    elif group_by == "event_type":
        bucket, order = "event_type", "e DESC, b"
    else:
        params["key"] = group_by[len("properties."):]
        bucket, order = PROPERTY_VALUE, "e DESC, b"
    if bd is not None:
        return _split(src, bucket, bd, who, where, params)
    return (f"SELECT {bucket} AS b, {src.count} AS e, uniqExact({who.key}) FROM {src.table}"
            f" WHERE {where} GROUP BY b ORDER BY {order}", params)


def events(ch: ClickHouse, filters: Filters, group_by: str, rollups: bool = True,
           bd: Breakdown | None = None) -> list[dict[str, Any]]:
    who = resolver(ch, filters.project_id)
    if bd is not None:
        found = split("events", ch, *events_query(filters, group_by, who, bd, rollups), bd)
        return [{"bucket": _bucket_text(b, group_by, filters.tz), "breakdown": t, "events": e, "users": u}
                for b, t, _, e, u in _by_bucket(found, group_by in TIME_BUCKETS)]
    rows = query("events", ch, *events_query(filters, group_by, who, bd, rollups))
    return [{"bucket": _bucket_text(b, group_by, filters.tz), "events": int(e), "users": int(u)}
            for b, e, u in rows]


def dau(ch: ClickHouse, filters: Filters, rollups: bool = True) -> list[dict[str, Any]]:
    return [{"date": row["bucket"], "unique_users": row["unique_users"]}
            for row in active_users(ch, filters, "day", rollups, "dau")]


def active_users_query(filters: Filters, interval: str, who: Resolver, bd: Breakdown | None = None,
                       rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """``b, users`` per bucket; with ``bd``: the rows to split (``split``)."""
    src = _source(filters, rollups, bd=bd)
    where, params = condition(filters, time_column=src.time)
    params["tz"] = filters.tz
    bucket = TIME_BUCKETS[interval].format(time=src.time)
    if bd is not None:
        return _split(src, bucket, bd, who, where, params)
    return (f"SELECT {bucket} AS b, uniqExact({who.key}) FROM {src.table}"
            f" WHERE {where} GROUP BY b ORDER BY b", params)


def active_users(ch: ClickHouse, filters: Filters, interval: str, rollups: bool = True,
                 endpoint: str = "active-users", bd: Breakdown | None = None) -> list[dict[str, Any]]:
    who = resolver(ch, filters.project_id)
    if bd is not None:
        found = split(endpoint, ch, *active_users_query(filters, interval, who, bd, rollups), bd)
        return [{"bucket": b.isoformat(), "breakdown": t, "unique_users": u}
                for b, t, _, _, u in _by_bucket(found, True)]
    rows = query(endpoint, ch, *active_users_query(filters, interval, who, bd, rollups))
    return [{"bucket": b.isoformat(), "unique_users": int(u)} for b, u in rows]


def spans_may_answer(filters: Filters, fields: frozenset[str]) -> bool:
    """Whether the span tables may answer (``spans_answer`` then asks the tables)."""
    return not filters.include_bots and filters.cohort is None and covers(filters, fields)


def spans_answer(ch: ClickHouse, filters: Filters, fields: frozenset[str]) -> tuple[int, int] | None:
    """The span tables' parts (per type, per path) when they answer this query
    exactly (pulse.core.rollups), else None. The whole table's hours settle most
    ranges (any range up to today) from part metadata; the project's own hours
    settle the rest. Never with a cohort (the counts per hour keep no person)."""
    if not spans_may_answer(filters, fields):
        return None
    state = query("span-state", ch, span_state(ch.layout), {"database": ch.database})
    type_parts, page_parts, first_s, last_s, hour_parts = state[0]
    table = table_hours(int(first_s), int(last_s), int(hour_parts))
    if table is None or not spans_hold(filters, *table):
        _, params = condition(filters, time_column=None)
        hours, first, last = query("span-bounds", ch, PROJECT_HOURS, params)[0]
        if not spans_hold(filters, int(hours), first, last):
            return None
    return int(type_parts), int(page_parts)


def top_events_split(filters: Filters, who: Resolver, bd: Breakdown,
                     rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """The rows to split per event type (``split``)."""
    src = _source(filters, rollups, by_type=True, bd=bd)
    where, params = condition(filters, time_column=src.time)
    return _split(src, "event_type", bd, who, where, params)


def top_events(ch: ClickHouse, filters: Filters, limit: int, rollups: bool = True,
               bd: Breakdown | None = None) -> list[dict[str, Any]]:
    if bd is not None:
        who = resolver(ch, filters.project_id)
        found = split("top-events", ch, *top_events_split(filters, who, bd, rollups), bd)
        totals: dict[str, int] = {}
        for row in found:
            totals[row[0]] = totals.get(row[0], 0) + row[3]
        kept = set(sorted(totals, key=lambda t: (-totals[t], t))[:limit])
        return [{"event_type": t, "breakdown": v, "count": c, "users": u}
                for t, v, _, c, u in _by_bucket([r for r in found if r[0] in kept], False)]
    counted, params = condition(filters, time_column="hour")
    params["limit"] = limit
    counts = ("SELECT event_type, sum(events) AS n FROM type_hours WHERE " + counted
              + " GROUP BY event_type ORDER BY n DESC, event_type ASC LIMIT {limit:UInt32}")
    spans = None
    if not (rollups and spans_may_answer(filters, TYPE_SPAN_FIELDS)):
        who = resolver(ch, filters.project_id)
    else:
        # the counts per type are asked with the two checks (wasted, ~6 ms, when the span
        # tables' state says they do not answer)
        who, spans, top = at_once(lambda: resolver(ch, filters.project_id),
                                  lambda: spans_answer(ch, filters, TYPE_SPAN_FIELDS),
                                  lambda: query("top-events", ch, counts, params))
    if spans is not None:
        spanned, _ = condition(filters, time_column=None)
        source, users = span_read("type_spans", spans[0], who)
        # then persons for the kept types only (the index narrows the read to them); two plain
        # queries plan in ~5 ms where one joining them took ~8
        params["types"] = [t for t, _ in top]
        users_of = dict(query("top-events-persons", ch, f"SELECT event_type, {users} FROM {source} WHERE {spanned}"
                           " AND event_type IN {types:Array(String)} GROUP BY event_type", params)) if top else {}
        return [{"event_type": t, "count": int(c), "users": int(users_of.get(t, 0))} for t, c in top]
    src = _source(filters, rollups, by_type=True)
    where, params = condition(filters, time_column=src.time)
    params["limit"] = limit
    rows = query("top-events", ch,
                 f"SELECT event_type, {src.count} AS c, uniqExact({who.key}) AS u FROM {src.table} WHERE {where}"
                 " GROUP BY event_type ORDER BY c DESC, event_type ASC LIMIT {limit:UInt32}", params)
    return [{"event_type": t, "count": int(c), "users": int(u)} for t, c, u in rows]


def pages(ch: ClickHouse, filters: Filters, limit: int, rollups: bool = True) -> dict[str, Any]:
    views = replace(filters, event_type="page_view")
    who = resolver(ch, filters.project_id)
    spans = spans_answer(ch, views, PAGE_SPAN_FIELDS) if rollups else None
    if spans is not None:
        rows = _pages_from_spans(ch, replace(views, event_type=None), limit, spans, who)
    else:
        src = page_source(views) if rollups and not filters.include_bots else EVENTS
        if src is not EVENTS:
            views = replace(views, event_type=None)  # the rollup holds page views only
        where, params = condition(views, time_column=src.time)
        params["limit"] = limit + 1
        rows = query("pages", ch,
                     f"SELECT path, {src.count} AS v, uniqExact({who.key}), grouping(path) AS whole FROM {src.table}"
                     f" WHERE {where} GROUP BY GROUPING SETS ((path), ())"
                     " ORDER BY whole DESC, v DESC, path ASC LIMIT {limit:UInt32}", params)
    totals = next((r for r in rows if r[3]), ("", 0, 0, 1))
    return {"total_views": int(totals[1]), "unique_users": int(totals[2]),
            "top_paths": [{"path": p, "views": int(v), "users": int(u)} for p, v, u, whole in rows if not whole]}


def _pages_from_spans(ch: ClickHouse, views: Filters, limit: int, parts: tuple[int, int],
                      who: Resolver) -> list[tuple[Any, ...]]:
    """Views per path from ``path_hours``; users per path from ``page_spans``. All
    page viewers: with no segment, the ``page_view`` rows of ``type_spans``; with
    path segments (ANDed: one path at most) the matching path's own count."""
    counted, params = condition(views, time_column="hour")
    spanned, _ = condition(views, time_column=None)
    params["limit"] = limit + 1
    types, type_users = span_read("type_spans", parts[0], who)
    paths, path_users = span_read("page_spans", parts[1], who)
    whole = (f"SELECT {path_users} FROM {paths} WHERE {spanned}" if views.segments else
             f"SELECT {type_users} FROM {types} WHERE project_id = {{f_project:UUID}} AND event_type = 'page_view'")
    return query("pages", ch,
                 "SELECT v.path, v.n, u.n, v.whole FROM (SELECT path, sum(views) AS n,"
                 f" toUInt8(grouping(path)) AS whole FROM path_hours WHERE {counted}"
                 " GROUP BY GROUPING SETS ((path), ()) ORDER BY whole DESC, n DESC, path ASC LIMIT {limit:UInt32})"
                 f" AS v LEFT JOIN (SELECT path, {path_users} AS n, toUInt8(0) AS whole FROM {paths}"
                 f" WHERE {spanned} GROUP BY path UNION ALL SELECT '', ({whole}), toUInt8(1)) AS u"
                 " USING (path, whole) ORDER BY v.whole DESC, v.n DESC, v.path ASC", params)


def one_country(filters: Filters) -> str | None:
    """The country of segments that all name one country (``country:DE``), else None."""
    values = {s.value for s in filters.segments}
    if filters.segments and len(values) == 1 and all(s.field == "country" for s in filters.segments):
        return values.pop()
    return None


def overview_from_spans(ch: ClickHouse, filters: Filters, who: Resolver) -> dict[str, Any] | None:
    """The overview, without a segment or with one country, over a range the
    span tables answer (``spans_answer``): events and event types from
    ``type_hours``, persons from ``type_spans`` (with a country: all three from
    ``actor_type_hours``), sessions from ``session_spans`` (``sessions_reaching``;
    with a country, its span there), the bots' events from the events table's
    ``bot`` column first (PREWHERE: the other columns are read only where a
    bot's event is). None otherwise."""
    country = one_country(filters)
    if (filters.segments and country is None) or filters.event_type is not None \
            or spans_answer(ch, filters, frozenset({"country"} if country is not None else ())) is None:
        return None
    counted, params = condition(filters, time_column="hour")
    spanned, _ = condition(replace(filters, segments=()), time_column=None)
    everything, _ = condition(replace(filters, include_bots=True))
    _, largest = query("span-state", ch, session_parts(ch.layout), {})[0]
    reaches = SPAN_REACHES if country is None else country_reaches("country")
    sessions, extra = sessions_reaching(str(largest), bool(ch.layout.cluster), reaches)
    params.update(extra, country=country)
    if country is None:
        e, t = query("overview", ch, f"SELECT sum(events), uniqExact(event_type) FROM type_hours WHERE {counted}",
                     params)[0]
        u = query("overview", ch, f"SELECT uniqExactIf({who.key}, {SPAN_REACHES}) FROM type_spans WHERE {spanned}",
                  params)[0][0]
    else:
        e, u, t = query("overview", ch, f"SELECT sum(events), uniqExact({who.key}), uniqExact(event_type)"
                        f" FROM actor_type_hours WHERE {counted}", params)[0]
    s = query("overview", ch, f"SELECT {sessions} FROM session_spans WHERE {spanned}", params)[0][0]
    b = query("overview", ch, f"SELECT count() FROM events PREWHERE bot = 1 WHERE {everything}", params)[0][0]
    return {"events": int(e or 0), "unique_users": int(u), "unique_event_types": int(t), "unique_sessions": int(s),
            "bot_events_excluded": int(b)}


def overview(ch: ClickHouse, filters: Filters, rollups: bool = True) -> dict[str, Any]:
    """Also how many events of known bots the figures leave out (0 with include_bots)."""
    who = resolver(ch, filters.project_id)
    if rollups:
        fast = overview_from_spans(ch, filters, who)
        if fast is not None:
            return fast
    where, params = condition(replace(filters, include_bots=True))
    counted = "1" if filters.include_bots else "bot = 0"
    e, u, t, s, b = query("overview", ch,
                          f"SELECT countIf({counted}), uniqExactIf({who.key}, {counted}),"
                          f" uniqExactIf(event_type, {counted}),"
                          f" uniqExactIf(session_id, session_id != '' AND {counted}),"
                          f" countIf(NOT ({counted})) FROM events WHERE {where}", params)[0]
    return {"events": int(e), "unique_users": int(u), "unique_event_types": int(t), "unique_sessions": int(s),
            "bot_events_excluded": int(b)}


def user(ch: ClickHouse, filters: Filters, user_id: str) -> dict[str, Any]:
    where, params = condition(filters)
    params["actor"] = user_id
    rows = query("user", ch,
                 f"SELECT event_type, count() AS c, min(occurred_at), max(occurred_at) FROM events"
                 f" WHERE {where} AND {members_condition('f_project', 'actor')}"
                 " GROUP BY event_type ORDER BY c DESC, event_type", params)
    if not rows:
        raise NotFound(f"no events from user {user_id[:80]!r} in this range")
    first = min(r[2] for r in rows)
    last = max(r[3] for r in rows)
    return {"user_id": user_id, "first_seen": _rfc3339(first), "last_seen": _rfc3339(last),
            "events": sum(int(r[1]) for r in rows),
            "top_events": [{"event_type": t, "count": int(c)} for t, c, _, _ in rows[:DEFAULT_LIMIT]]}


def summary(ch: ClickHouse, filters: Filters, now: datetime | None = None) -> dict[str, Any]:
    """The live view: the last 5 minutes, the last minute, and today (in ``tz``).
    ``from``/``to`` do not apply; segments and ``event_type`` do."""
    now = now or datetime.now(UTC)
    today = datetime.combine(now.astimezone(ZoneInfo(filters.tz)).date(), datetime.min.time(),
                             ZoneInfo(filters.tz)).astimezone(UTC)
    recent = now - timedelta(minutes=5)
    scoped = replace(filters, start=min(today, recent), end=now + timedelta(milliseconds=1))
    where, params = condition(scoped)
    params.update(m5=recent.replace(tzinfo=None), m1=(now - timedelta(minutes=1)).replace(tzinfo=None),
                  today=today.replace(tzinfo=None), top=SUMMARY_TOP)
    who = resolver(ch, filters.project_id)
    e5, u5, e1, et = query("summary", ch,
                           "SELECT countIf(occurred_at >= {m5:DateTime64(3, 'UTC')}),"
                           f" uniqExactIf({who.key}, occurred_at >= {{m5:DateTime64(3, 'UTC')}}),"
                           " countIf(occurred_at >= {m1:DateTime64(3, 'UTC')}),"
                           " countIf(occurred_at >= {today:DateTime64(3, 'UTC')})"
                           f" FROM events WHERE {where}", params)[0]
    top = query("summary", ch,
                f"SELECT event_type, count() AS c FROM events WHERE {where}"
                " AND occurred_at >= {today:DateTime64(3, 'UTC')}"
                " GROUP BY event_type ORDER BY c DESC, event_type LIMIT {top:UInt32}", params)
    return {"events_last_5m": int(e5), "users_last_5m": int(u5), "events_per_second_1m": round(int(e1) / 60, 3),
            "events_today": int(et), "top_events_today": [{"event_type": t, "count": int(c)} for t, c in top]}


def _rfc3339(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
