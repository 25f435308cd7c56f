"""Which table answers a query: the events table, or an hourly rollup.

``actor_hours``, ``actor_type_hours`` and ``page_hours`` (migration 0003)
hold, per UTC hour, country and user, the event count (also per event type;
page views per path); the last two are ordered by country first (0005), so a
country segment reads that country's rows only.
They give the same answer as the events table when the query only cuts
whole hours: the range starts and ends on an hour, every day/week/month
boundary in ``tz`` falls on a UTC hour (a whole-hour offset throughout the
range), and segments name only columns the rollup keeps. Anything else
(properties, sessions, minutes, half-hour zones, exact timestamps) reads
``events``, which stays the reference answer.

``type_spans`` and ``page_spans`` (migration 0004) hold one row per user and
event type (per path for page views): the first and last time the user sent
it; ``type_hours`` and ``path_hours`` the counts per hour. When a range
starts at or before the project's first event, or ends after its last one
(any range up to today), a user has events of a type in the range exactly
when the span reaches into it: ``last >= start`` and ``first < end``. Unique
users per type or path then need one row per user, not one per user and hour.
A span table merged into one part is read with ``FINAL`` (one row per user:
count them); in several parts, a user may have a partial span in each, and
under the same condition a user is in the range exactly when one of them
reaches into it, so the distinct users among those rows are counted instead
(no merge at query time; ``FINAL`` over overlapping parts costs far more).
Span parts older than a minute are merged into one (0005).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pulse.core.filters import Filters
from pulse.core.persons import ACTORS, Resolver
from pulse.storage.clickhouse import Layout


@dataclass(frozen=True)
class Source:
    table: str
    time: str  # the time column
    count: str  # the expression that counts events
    weight: str  # the events one row stands for


EVENTS = Source("events", "occurred_at", "count()", "toUInt64(1)")
ACTOR_HOURS = Source("actor_hours", "hour", "sum(events)", "events")
ACTOR_TYPE_HOURS = Source("actor_type_hours", "hour", "sum(events)", "events")
PAGE_HOURS = Source("page_hours", "hour", "sum(views)", "views")
ACTOR_HOURS_FIELDS = frozenset({"country"})
ACTOR_TYPE_HOURS_FIELDS = frozenset({"event_type", "country"})
PAGE_HOURS_FIELDS = frozenset({"path", "country"})
TYPE_SPAN_FIELDS = frozenset({"event_type"})
PAGE_SPAN_FIELDS = frozenset({"path"})
SPAN_REACHES = "last_at >= {f_start:DateTime64(3, 'UTC')} AND first_at < {f_end:DateTime64(3, 'UTC')}"
# How many parts each span table is in now, and the hours ``type_hours``
# holds across every project (its parts' min/max of ``hour``, seconds since
# the epoch; 0 when unknown) and how many parts it has: a cheap first check.
# On a cluster, the parts of every node (each holds some users' rows): a
# span table is then in several parts, read without FINAL. The database is
# named, not currentDatabase(), which another node would answer for itself.
SPAN_STATE = (
    "SELECT countIf(table = '{type_spans}'), countIf(table = '{page_spans}'),"
    " toUnixTimestamp(minIf(min_time, table = '{type_hours}')),"
    " toUnixTimestamp(maxIf(max_time, table = '{type_hours}')),"
    " countIf(table = '{type_hours}') FROM {parts} WHERE active AND database = {{database:String}}"
    " AND table IN ('{type_spans}', '{page_spans}', '{type_hours}')")


def span_state(layout: Layout) -> str:
    return SPAN_STATE.format(type_spans=layout.local("type_spans"), page_spans=layout.local("page_spans"),
                             type_hours=layout.local("type_hours"), parts=layout.on_every_replica("system.parts"))


# The session span table's parts (on every node): how many, and the largest one.
SESSION_PARTS = ("SELECT count(), argMax(name, rows) FROM {parts} WHERE active AND database = currentDatabase()"
                 " AND table = '{table}'")


def session_parts(layout: Layout) -> str:
    return SESSION_PARTS.format(parts=layout.on_every_replica("system.parts"), table=layout.local("session_spans"))


def sessions_reaching(largest: str, cluster: bool, reaches: str = SPAN_REACHES) -> tuple[str, dict[str, str]]:
    """The distinct sessions among ``session_spans`` rows that reach into the
    range (``reaches``: ``SPAN_REACHES``, or ``country_reaches``), and its
    parameters. Each part holds a session at
    most once (a view's insert groups by session; a merge joins its rows), so a
    session in several rows has one in a part other than the largest: the rows
    are counted, less those repeated, which are found among the few sessions
    of the other parts (none when the table is merged into one part; a part
    written or merged since ``largest`` was read is among the others, so the
    count stays exact). On a cluster a session's rows may sit on several
    shards: a distinct count."""
    if cluster:
        return f"uniqExactIf(session_id, {reaches})", {}
    repeated = ("session_id IN (SELECT session_id FROM session_spans WHERE project_id = {f_project:UUID}"
                " AND _part != {largest:String})")
    return (f"countIf({reaches}) - countIf({reaches} AND {repeated})"
            f" + uniqExactIf(session_id, {reaches} AND {repeated})", {"largest": largest})


def country_reaches(country_param: str) -> str:
    """``SPAN_REACHES`` for a session's events from one country (the bound
    ``country_param``): its span there, kept per country (migration 0032)."""
    country = f"{{{country_param}:String}}"
    return (f"(mapContains(country_last, {country}) AND country_last[{country}] >= {{f_start:DateTime64(3, 'UTC')}}"
            f" AND country_first[{country}] < {{f_end:DateTime64(3, 'UTC')}})")


# The project's own hours: the exact check.
PROJECT_HOURS = "SELECT count(), min(hour), max(hour) FROM type_hours WHERE project_id = {f_project:UUID}"


def _on_hour(moment: datetime) -> bool:
    return moment.minute == 0 and moment.second == 0 and moment.microsecond == 0


def whole_hour_offsets(tz: str, start: datetime, end: datetime) -> bool:
    """Whether ``tz``'s UTC offset is a whole number of hours over the range
    (checked daily and at both ends: offsets change at most a few times a year)."""
    zone = ZoneInfo(tz)
    moment = start
    while True:
        offset = moment.astimezone(zone).utcoffset() or timedelta()
        if offset.total_seconds() % 3600:
            return False
        if moment >= end:
            return True
        moment = min(moment + timedelta(days=1), end)


def covers(filters: Filters, fields: frozenset[str], needed: frozenset[str] = frozenset()) -> bool:
    """Whether a table keeping ``fields`` (per hour) answers exactly: whole
    hours, and every segment's field (and each of ``needed``, e.g. breakdown
    fields) among them."""
    return (_on_hour(filters.start) and _on_hour(filters.end)
            and all(s.field in fields for s in filters.segments) and needed <= fields
            and whole_hour_offsets(filters.tz, filters.start, filters.end))


def actor_source(filters: Filters, by_type: bool = False, needed: frozenset[str] = frozenset()) -> Source:
    """Per-user counts; ``by_type`` when the query groups by event type,
    ``needed`` the other fields it reads (breakdowns)."""
    if not by_type and filters.event_type is None and covers(filters, ACTOR_HOURS_FIELDS, needed):
        return ACTOR_HOURS
    return ACTOR_TYPE_HOURS if covers(filters, ACTOR_TYPE_HOURS_FIELDS, needed) else EVENTS


def page_source(filters: Filters, needed: frozenset[str] = frozenset()) -> Source:
    """For page views: ``filters.event_type`` is ``page_view`` by then."""
    return PAGE_HOURS if covers(filters, PAGE_HOURS_FIELDS, needed) else EVENTS


def spans_hold(filters: Filters, hours: int, first_hour: datetime, last_hour: datetime) -> bool:
    """For a query the hourly tables cover (``covers``): whether the span tables
    answer it exactly, i.e. the range takes in the project's first event or
    everything after its last one (``first_hour``/``last_hour``: the project's
    earliest and latest hour in ``type_hours``, ``hours`` its row count; UTC).
    The whole table's first and last hour (every project's) are a sound stand-in:
    a range that takes in the table's first hour takes in the project's."""
    if hours == 0:
        return True
    first_hour, last_hour = (h if h.tzinfo else h.replace(tzinfo=UTC) for h in (first_hour, last_hour))
    return filters.start <= first_hour or filters.end >= last_hour + timedelta(hours=1)


def table_hours(first_s: int, last_s: int, parts: int) -> tuple[int, datetime, datetime] | None:
    """``spans_hold``'s arguments from SPAN_STATE's whole-table bounds, or None when
    they may be unknown. type_hours is partitioned by month of ``hour``, so every
    part has its min/max: a minimum of 0 is an event in 1970's first hour (the
    earliest Pulse accepts), a real bound; a maximum of 0 is taken as unknown."""
    if parts and not last_s:
        return None
    return parts, datetime.fromtimestamp(first_s, UTC), datetime.fromtimestamp(last_s, UTC)


def span_read(table: str, parts: int, who: Resolver = ACTORS) -> tuple[str, str]:
    """(what to read FROM, the unique-user expression) for a span table in ``parts``
    parts. One part read with FINAL holds one row per actor: without identity
    links that is one per person, so the rows are counted; with links, the
    distinct persons among the reaching rows."""
    if parts <= 1:
        users = f"countIf({SPAN_REACHES})" if not who.resolving else f"uniqExactIf({who.key}, {SPAN_REACHES})"
        return f"{table} FINAL", users
    return table, f"uniqExactIf({who.key}, {SPAN_REACHES})"
