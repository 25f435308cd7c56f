"""Weekly cohort retention, as API.md defines it.

A user (a person, pulse.core.persons) has as cohort the week (Monday, in ``tz``) of their first event ever in
the project. ``week_0`` is the cohort's size; ``week_k`` is the percentage of
the cohort with any event in the k-th week after, rounded to 1 decimal. Rows
run from ``start_date``'s week through ``windows`` weeks after it; weeks that
start after today (in ``tz``) are left out. Segments narrow the events that
count: a cohort member counts in week k when they have a matching event in
that week (so with a segment, ``week_0`` is the cohort members with a matching
event in their first week). ``from``/``to`` do not apply: the weeks do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pulse.core import breakdowns
from pulse.core.breakdowns import Breakdown
from pulse.core.filters import Filters, condition, parse_day
from pulse.core.persons import Resolver, resolver
from pulse.core.rollups import EVENTS, actor_source
from pulse.core.stats import percent, query
from pulse.errors import InvalidInput
from pulse.storage.clickhouse import ClickHouse

MAX_WINDOWS = 52
DEFAULT_WINDOWS = 11


@dataclass(frozen=True)
class Retention:
    first_week: date  # a Monday
    windows: int


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def parse_retention(params: Mapping[str, Sequence[str]], tz: str, today: date | None = None) -> Retention:
    windows_raw = _one(params, "windows")
    if windows_raw is None:
        windows = DEFAULT_WINDOWS
    elif not windows_raw.isdigit() or len(windows_raw) > 3 or not 1 <= int(windows_raw) <= MAX_WINDOWS:
        raise InvalidInput.field("windows", f"must be an integer from 1 to {MAX_WINDOWS}")
    else:
        windows = int(windows_raw)
    start_raw = _one(params, "start_date")
    today = today or datetime.now(ZoneInfo(tz)).date()
    start = parse_day(start_raw, "start_date") if start_raw else today - timedelta(weeks=windows)
    if start > today:
        raise InvalidInput.field("start_date", "must not be after today")
    return Retention(monday(start), windows)


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise InvalidInput.field(name, "may be given once")
    return values[0] if values else None


def retention_query(filters: Filters, spec: Retention, who: Resolver, bd: Breakdown | None = None,
                    rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """``cw, k, persons``; split by ``bd``: ``breakdown, rank, cw, k, persons``.
    A person's breakdown value is that of their first event ever (ties: the
    smaller value), or their own for ``person.<key>``; split reads ``events``."""
    zone = ZoneInfo(filters.tz)
    last_week = spec.first_week + timedelta(weeks=spec.windows)
    start = datetime.combine(spec.first_week, time(), zone).astimezone(UTC)
    end = datetime.combine(last_week + timedelta(weeks=spec.windows + 1), time(), zone).astimezone(UTC)
    scoped = replace(filters, start=start, end=end)
    src = actor_source(scoped) if rollups and not filters.include_bots and bd is None else EVENTS
    where, params = condition(scoped, time_column=src.time)
    params.update(tz=filters.tz, project=filters.project_id, first_week=spec.first_week, last_week=last_week)
    bots_out = src is EVENTS and not filters.include_bots  # the rollups hold no bots
    firsts = ""
    if bd is not None:
        exprs, value_params = breakdowns.event_exprs(bd)
        params.update(value_params)
        firsts = "".join(f", min(({src.time}, {expr})).2 AS bd{i}" for i, expr in exprs.items())
    persons = f"""
            SELECT {who.key} AS person, toMonday(min({src.time}), {{tz:String}}) AS cw,
                   groupUniqArrayIf(toMonday({src.time}, {{tz:String}}), {where}) AS weeks{firsts}
            FROM {src.table} WHERE project_id = {{project:UUID}}{" AND bot = 0" if bots_out else ""}
            GROUP BY person
            HAVING cw >= {{first_week:Date}} AND cw <= {{last_week:Date}} AND has(weeks, cw)"""
    if bd is None:
        return f"SELECT cw, intDiv(w - cw, 7) AS k, count() FROM ({persons}) ARRAY JOIN weeks AS w" \
               " WHERE w >= cw GROUP BY cw, k", params
    persons, person_params = breakdowns.with_person_values(persons, bd, "project")
    params.update(person_params)
    ranked = breakdowns.ranked_persons(persons, bd)
    return (f"SELECT breakdown, rank, cw, intDiv(w - cw, 7) AS k, count() FROM ({ranked})"
            " ARRAY JOIN weeks AS w WHERE w >= cw GROUP BY breakdown, rank, cw, k", params)


def _rows(spec: Retention, today: date, counts: dict[tuple[date, int], int],
          extra: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c in range(spec.windows + 1):
        week = spec.first_week + timedelta(weeks=c)
        if week > today:
            break
        size = counts.get((week, 0), 0)
        row: dict[str, Any] = {"cohort_week": week.isoformat(), **extra, "week_0": size}
        for k in range(1, spec.windows + 1):
            if week + timedelta(weeks=k) > today:
                break
            row[f"week_{k}"] = percent(counts.get((week, k), 0), size)
        out.append(row)
    return out


def retention(ch: ClickHouse, filters: Filters, spec: Retention, today: date | None = None,
              rollups: bool = True, bd: Breakdown | None = None) -> list[dict[str, Any]]:
    today = today or datetime.now(ZoneInfo(filters.tz)).date()
    who = resolver(ch, filters.project_id)
    rows = query("retention", ch, *retention_query(filters, spec, who, bd, rollups))
    if bd is None:
        return _rows(spec, today, {(cw, int(k)): int(n) for cw, k, n in rows}, {})
    values: dict[int, list[str]] = {}
    split: dict[int, dict[tuple[date, int], int]] = {}
    for value, rank, cw, k, n in rows:
        values[int(rank)] = list(value)
        split.setdefault(int(rank), {})[(cw, int(k))] = int(n)
    return [row for rank in sorted(values) for row in _rows(spec, today, split[rank], {"breakdown": values[rank]})]
