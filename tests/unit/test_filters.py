"""Filters, stats parameters and funnel bodies: pure parsing, no server."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from pulse.core import funnel, retention, stats
from pulse.core.filters import Segment, condition, parse_filters
from pulse.errors import InvalidInput

PROJECT = "00000000-0000-0000-0000-000000000001"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def field_of(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    return exc.value.errors[0].field


def test_dates_are_inclusive_days_in_tz() -> None:
    f = parse_filters({"from": ["2026-03-29"], "to": ["2026-03-29"], "tz": ["Europe/Kyiv"]}, PROJECT, 731)
    assert f.start == datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    assert f.end == datetime(2026, 3, 29, 21, 0, tzinfo=UTC)  # DST starts that day: 23 hours
    assert f.first_day == f.last_day == date(2026, 3, 29)


def test_default_range_is_30_days_to_today() -> None:
    f = parse_filters({}, PROJECT, 731, now=NOW)
    assert (f.first_day, f.last_day) == (date(2026, 10, 24), date(2026, 11, 22))


def test_rfc3339_bounds_are_inclusive() -> None:
    f = parse_filters({"from": ["2026-01-01T10:00:00Z"], "to": ["2026-01-01T11:00:00+01:00"]}, PROJECT, 731)
    assert f.start == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert f.end == datetime(2026, 1, 1, 10, 0, 0, 1000, tzinfo=UTC)


@pytest.mark.parametrize(("params", "field"), [
    ({"from": ["2026-01-02"], "to": ["2026-01-01"]}, "from"),
    ({"from": ["2020-01-01"], "to": ["2026-01-01"]}, "to"),
    ({"tz": ["Nowhere/Land"]}, "tz"),
    ({"from": ["01/02/2026"]}, "from"),
    ({"segment": ["colour:red"]}, "segment"),
    ({"segment": ["properties.a b:1"]}, "segment"),
    ({"tz": ["UTC", "UTC"]}, "tz"),
])
def test_bad_filters_name_the_parameter(params: dict[str, list[str]], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_filters(params, PROJECT, 731)
    assert field_of(exc) == field


def test_condition_binds_every_value() -> None:
    f = parse_filters({"segment": ["country:'; DROP TABLE events", "properties.plan:1' OR '1"]},
                      PROJECT, 731, now=NOW)
    where, params = condition(f)
    assert "DROP" not in where and "OR '1" not in where and PROJECT not in where
    assert params["f_sv0"] == "'; DROP TABLE events"
    assert params["f_sk1"] == "plan"
    assert f.segments == (Segment("country", "'; DROP TABLE events"), Segment("properties.plan", "1' OR '1"))


@pytest.mark.parametrize("value", ["hour", "day", "week", "month", "event_type", "properties.a.b-c_d"])
def test_group_by_accepts(value: str) -> None:
    assert stats.parse_group_by(value) == value


@pytest.mark.parametrize("value", ["minute", "properties.", "properties.a;b", "user_id", "properties." + "a" * 65])
def test_group_by_refuses(value: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        stats.parse_group_by(value)
    assert field_of(exc) == "group_by"


def test_limit() -> None:
    assert stats.parse_limit([]) == 10
    assert stats.parse_limit(["1000"]) == 1000
    for bad in (["0"], ["1001"], ["1e3"], ["1", "2"], ["-5"]):
        with pytest.raises(InvalidInput):
            stats.parse_limit(bad)


def test_retention_weeks_start_monday() -> None:
    spec = retention.parse_retention({"start_date": ["2026-11-19"], "windows": ["4"]}, "UTC", date(2026, 11, 22))
    assert spec == retention.Retention(date(2026, 11, 16), 4)


def test_funnel_body() -> None:
    spec = funnel.parse_funnel({"steps": ["a", {"event_type": "b", "segment": ["country:UA"]}],
                                "window_seconds": 60, "from": "2026-11-01", "to": "2026-11-02"}, PROJECT, 731)
    assert [s.event_type for s in spec.steps] == ["a", "b"]
    assert spec.steps[1].segments == (Segment("country", "UA"),)
    assert spec.window_seconds == 60
    with pytest.raises(InvalidInput) as exc:
        funnel.parse_funnel({"steps": ["a", "b"], "window_seconds": True}, PROJECT, 731)
    assert field_of(exc) == "window_seconds"
