"""Stats queries over the events table, exact as API.md defines them.

Each function takes ``Filters`` (already validated), builds SQL whose values
are all bound parameters, and shapes the rows into the documented answer.
A user is ``user_id``, or ``anonymous_id`` when ``user_id`` is empty: the
materialized ``actor`` column. Unique counts use ``uniqExact``.
"""

from __future__ import annotations

from typing import Any

from pulse import telemetry
from pulse.core.filters import Filters, condition
from pulse.storage.clickhouse import ClickHouse

MAX_LIMIT = 1000


def _timed(endpoint: str, ch: ClickHouse, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with telemetry.QUERY_LATENCY.labels(endpoint).time(), telemetry.span("clickhouse query", endpoint=endpoint):
        return ch.rows(sql, params)


def top_events(ch: ClickHouse, filters: Filters, limit: int) -> list[dict[str, Any]]:
    where, params = condition(filters)
    params["limit"] = limit
    rows = _timed("top-events", ch,
                  f"SELECT event_type, count() AS c, uniqExact(actor) AS u FROM events WHERE {where}"
                  " GROUP BY event_type ORDER BY c DESC, event_type ASC LIMIT {limit:UInt32}", params)
    return [{"event_type": t, "count": int(c), "users": int(u)} for t, c, u in rows]


def dau(ch: ClickHouse, filters: Filters) -> list[dict[str, Any]]:
    where, params = condition(filters)
    params["tz"] = filters.tz
    rows = _timed("dau", ch,
                  f"SELECT toDate(occurred_at, {{tz:String}}) AS d, uniqExact(actor) FROM events WHERE {where}"
                  " GROUP BY d ORDER BY d", params)
    return [{"date": d.isoformat(), "unique_users": int(u)} for d, u in rows]
