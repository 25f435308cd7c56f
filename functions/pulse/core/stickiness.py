"""Stickiness: how many persons did it on exactly 1, 2, 3… distinct days
(weeks, months) of the range.

Over the events the filters keep (``event_type``, segments, cohort; bots
left out) inside ``from``..``to``: each person (pulse.core.persons) counts
the distinct days (Mondays' weeks, months; in ``tz``) on which they have
one; the answer is ``[{intervals, users}]`` by ``intervals`` ascending, rows
with no persons left out. A week or month cut by the range counts when the
person has an event in its part inside the range. "Days of a week" is a
7-day range with ``interval=day``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pulse.core.filters import Filters, condition
from pulse.core.persons import Resolver, resolver
from pulse.core.rollups import EVENTS, actor_source
from pulse.core.stats import TIME_BUCKETS, query
from pulse.storage.clickhouse import ClickHouse


def stickiness_query(filters: Filters, interval: str, who: Resolver,
                     rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """``intervals, persons``."""
    src = actor_source(filters) if rollups and not filters.include_bots else EVENTS
    where, params = condition(filters, time_column=src.time)
    params["tz"] = filters.tz
    bucket = TIME_BUCKETS[interval].format(time=src.time)
    return (f"SELECT n, count() FROM (SELECT {who.key} AS person, uniqExact({bucket}) AS n FROM {src.table}"
            f" WHERE {where} GROUP BY person) GROUP BY n ORDER BY n", params)


def shape(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"intervals": int(n), "users": int(u)} for n, u in rows]


def stickiness(ch: ClickHouse, filters: Filters, interval: str, rollups: bool = True) -> list[dict[str, Any]]:
    who = resolver(ch, filters.project_id)
    return shape(query("stickiness", ch, *stickiness_query(filters, interval, who, rollups)))
