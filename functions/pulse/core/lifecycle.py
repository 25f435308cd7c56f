"""Lifecycle: per day (week, month) of the range, how many persons were new,
returning, resurrecting or dormant.

A person (pulse.core.persons) is *active* in a bucket (a whole day, Monday's
week or month, in ``tz``) when they have an event in it among those the
filters keep (``event_type``, segments, cohort; bots left out). Their first
bucket is that of their first such event ever (any time before the range
too). For each bucket of the range (the one holding ``from`` through the one
holding ``to``):

- ``new``: active in it, and it is their first bucket;
- ``returning``: active in it and in the bucket before;
- ``resurrecting``: active in it, not in the bucket before, but in an earlier one;
- ``dormant``: active in the bucket before, not in it.

``new + returning + resurrecting`` is the bucket's active persons. Every
bucket of the range has a row, zeros included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pulse.core.filters import Filters, condition
from pulse.core.persons import Resolver, resolver
from pulse.core.rollups import EVENTS, actor_source
from pulse.core.stats import TIME_BUCKETS, query
from pulse.storage.clickhouse import ClickHouse

KINDS = ("new", "returning", "resurrecting", "dormant")
NEXT = {"day": "addDays({}, 1)", "week": "addWeeks({}, 1)", "month": "addMonths({}, 1)"}


def bucket_of(day: date, interval: str) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1) if interval == "month" else day


def step(day: date, interval: str, n: int = 1) -> date:
    if interval == "day":
        return day + timedelta(days=n)
    if interval == "week":
        return day + timedelta(weeks=n)
    months = day.year * 12 + day.month - 1 + n
    return date(months // 12, months % 12 + 1, 1)


def buckets(filters: Filters, interval: str) -> list[date]:
    first, last = bucket_of(filters.first_day, interval), bucket_of(filters.last_day, interval)
    out = [first]
    while out[-1] < last:
        out.append(step(out[-1], interval))
    return out


def lifecycle_query(filters: Filters, interval: str, who: Resolver,
                    rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """``bucket, kind, persons`` for the range's buckets (kinds with no person absent)."""
    zone = ZoneInfo(filters.tz)
    shown = buckets(filters, interval)
    before = step(shown[0], interval, -1)
    start = datetime.combine(before, time(), zone).astimezone(UTC)
    end = datetime.combine(step(shown[-1], interval), time(), zone).astimezone(UTC)
    scoped = replace(filters, start=start, end=end)
    src = actor_source(scoped) if rollups and not filters.include_bots else EVENTS
    ever, params = condition(filters, prefix="e", time_column=None)
    _, scoped_params = condition(scoped, time_column=src.time)
    params.update(scoped_params, tz=filters.tz, first=shown[0], last=shown[-1])
    bots = " AND bot = 0" if src is EVENTS and not filters.include_bots else ""
    bucket = TIME_BUCKETS[interval].format(time=src.time)
    following = NEXT[interval].format("a")
    previous = NEXT[interval].replace(", 1)", ", -1)").format("a")
    sql = f"""
        SELECT item.1 AS b, item.2 AS kind, count() FROM (
            SELECT arrayConcat(
                       arrayMap(a -> (a, if(a = first, 'new',
                                             if(has(active, {previous}), 'returning', 'resurrecting'))),
                                arrayFilter(a -> a >= {{first:Date}}, active)),
                       arrayMap(a -> ({following}, 'dormant'),
                                arrayFilter(a -> {following} >= {{first:Date}} AND {following} <= {{last:Date}}
                                                 AND NOT has(active, {following}), active))) AS items
            FROM (
                SELECT {who.key} AS person, {TIME_BUCKETS[interval].format(time=f"min({src.time})")} AS first,
                       groupUniqArrayIf({bucket}, {src.time} >= {{f_start:DateTime64(3, 'UTC')}}) AS active
                FROM {src.table}
                WHERE {ever}{bots} AND {src.time} < {{f_end:DateTime64(3, 'UTC')}}
                GROUP BY person
                HAVING length(active) > 0
            )
        ) ARRAY JOIN items AS item
        GROUP BY b, kind"""
    return sql, params


def shape(filters: Filters, interval: str, rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    counts = {(b, kind): int(n) for b, kind, n in rows}
    return [{"bucket": b.isoformat(), **{kind: counts.get((b, kind), 0) for kind in KINDS}}
            for b in buckets(filters, interval)]


def lifecycle(ch: ClickHouse, filters: Filters, interval: str, rollups: bool = True) -> list[dict[str, Any]]:
    who = resolver(ch, filters.project_id)
    return shape(filters, interval, query("lifecycle", ch, *lifecycle_query(filters, interval, who, rollups)))
