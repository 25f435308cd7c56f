"""Breakdowns, funnel modes, paths, stickiness, lifecycle and cohorts against
answers computed in plain Python (stats_oracle) over the seeded event set,
sent through the real ingest path with its identity calls."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Api
from tests.integration import stats_oracle as oracle
from tests.integration.test_stats import Seeded, segs, send_dataset


@pytest.fixture(scope="module")
def seeded(pulse: Any) -> Seeded:
    from pulse.local.demo import create_demo_key

    project_id, key = create_demo_key(pulse.services, f"insights-{uuid.uuid4().hex[:8]}")
    api = Api(pulse.gateway_url, key)
    data = oracle.build(datetime.now(UTC))
    send_dataset(pulse, api, data)
    return Seeded(api, data, project_id)


# Breakdowns ------------------------------------------------------------------

BREAKDOWNS = [["country"], ["event_type"], ["properties.plan"], ["person.plan"], ["path"],
              ["country", "properties.plan"], ["properties.ref", "session_id"]]


@pytest.mark.parametrize("fields", BREAKDOWNS)
@pytest.mark.parametrize(("group_by", "tz", "limit"), [("day", "UTC", None), ("week", "Europe/Kyiv", 2),
                                                        ("event_type", "UTC", 3), ("hour", "Europe/Kyiv", 1)])
def test_events_broken_down(seeded: Seeded, fields: list[str], group_by: str, tz: str, limit: int | None) -> None:
    params: dict[str, Any] = {"group_by": group_by, "breakdown": fields, **seeded.range(tz)}
    if limit is not None:
        params["breakdown_limit"] = str(limit)
    got = seeded.get("/v1/stats/events", **params)
    assert got == oracle.events_split(seeded.select(tz), group_by, tz, fields, limit or 10)


@pytest.mark.parametrize("fields", BREAKDOWNS[:5])
@pytest.mark.parametrize("segments", [[], [("country", "UA")], [("properties.plan", "pro")]])
def test_active_users_broken_down(seeded: Seeded, fields: list[str], segments: list[tuple[str, str]]) -> None:
    got = seeded.get("/v1/stats/active-users", interval="week", breakdown=fields, breakdown_limit="3",
                     segment=segs(segments), **seeded.range("UTC"))
    assert got == oracle.active_split(seeded.select("UTC", segments), "week", "UTC", fields, 3)


@pytest.mark.parametrize("fields", BREAKDOWNS)
def test_top_events_broken_down(seeded: Seeded, fields: list[str]) -> None:
    got = seeded.get("/v1/stats/top-events", limit="4", breakdown=fields, breakdown_limit="2", **seeded.range("UTC"))
    assert got == oracle.top_events_split(seeded.select("UTC"), 4, fields, 2)


def test_breakdowns_have_other_and_none(seeded: Seeded) -> None:
    """The cases above are discriminating: values beyond the limit become
    "$other", missing properties "$none", and a person in two countries counts
    once in "$other"."""
    rows = oracle.events_split(seeded.select("UTC"), "week", "UTC", ["country"], 2)
    assert any(r["breakdown"] == ["$other"] for r in rows)
    rows = oracle.events_split(seeded.select("UTC"), "week", "UTC", ["properties.plan"], 10)
    assert any(r["breakdown"] == ["$none"] for r in rows)
    other = [r for r in oracle.active_split(seeded.select("UTC"), "month", "UTC", ["country"], 1)
             if r["breakdown"] == ["$other"]]
    by_value = oracle.active_split(seeded.select("UTC"), "month", "UTC", ["country"], 10)
    month = other[0]["bucket"]
    assert other[0]["unique_users"] < sum(r["unique_users"] for r in by_value
                                         if r["bucket"] == month and r["breakdown"] != ["UA"])


@pytest.mark.parametrize("fields", [["country"], ["person.plan"], ["event_type", "properties.plan"]])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Kyiv"])
def test_retention_broken_down(seeded: Seeded, fields: list[str], tz: str) -> None:
    today = datetime.now(ZoneInfo(tz)).date()
    start = today - timedelta(weeks=9, days=3)
    got = seeded.get("/v1/stats/retention", start_date=start.isoformat(), windows="10", tz=tz, breakdown=fields,
                     breakdown_limit="3")
    want = oracle.retention_split(seeded.data, start, 10, tz, today, fields, 3)
    assert got == want
    assert len({tuple(r["breakdown"]) for r in got}) > 1


def test_rollups_split_as_the_events_table(pulse: Any, seeded: Seeded) -> None:
    from pulse.core import breakdowns, rollups, stats
    from pulse.core.filters import parse_filters

    ch = pulse.services.ch
    filters = parse_filters({k: [v] for k, v in seeded.range("Europe/Kyiv").items()}, seeded.project_id, 731)
    for fields in (["country"], ["event_type"], ["country", "event_type"]):
        bd = breakdowns.make(fields, 3)
        assert bd is not None
        assert stats._source(filters, True, bd=bd) is not rollups.EVENTS
        for group_by in ("day", "week"):
            assert stats.events(ch, filters, group_by, bd=bd) == stats.events(ch, filters, group_by, False, bd)
        assert stats.top_events(ch, filters, 5, bd=bd) == stats.top_events(ch, filters, 5, False, bd)


@pytest.mark.parametrize(("params", "field"), [
    ({"breakdown": ["nope"]}, "breakdown"), ({"breakdown": ["a", "b", "c"]}, "breakdown"),
    ({"breakdown": ["country", "country"]}, "breakdown"), ({"breakdown": ["properties.bad key"]}, "breakdown"),
    ({"breakdown": ["country"], "breakdown_limit": "0"}, "breakdown_limit"),
    ({"breakdown": ["country"], "breakdown_limit": "101"}, "breakdown_limit"),
])
def test_bad_breakdowns_name_the_field(seeded: Seeded, params: dict[str, Any], field: str) -> None:
    from urllib.parse import urlencode

    for path in ("/v1/stats/events", "/v1/stats/active-users", "/v1/stats/top-events", "/v1/stats/retention"):
        answer = seeded.api.get(path + "?" + urlencode(params, doseq=True))
        assert answer.status == 400, (path, answer.body[:300])
        assert answer.json["errors"][0]["field"] == field
