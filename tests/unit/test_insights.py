"""The insight kernels' builders: a parsed request in, SQL text and bound
parameters out, checked without a store (test_insights.py runs them)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import pytest

from pulse.core import breakdowns, cohorts, funnel, lifecycle, paths, retention, stats, stickiness
from pulse.core.filters import parse_filters
from pulse.core.persons import ACTORS, PERSON, PERSONS
from pulse.errors import InvalidInput

PROJECT = "00000000-0000-0000-0000-000000000001"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HOSTILE = "x' OR 1=1 --\\"


def field_of(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    return exc.value.errors[0].field


def filters(**params: Any) -> Any:
    return parse_filters({k: v if isinstance(v, list) else [v] for k, v in params.items()}, PROJECT, 731, now=NOW)


def only_bound(sql: str, params: dict[str, Any], *values: str) -> None:
    """Each value is a bound parameter and never part of the text; every
    placeholder has its parameter."""
    for value in values:
        assert value not in sql
        assert any(value == v or (isinstance(v, list) and value in v) for v in params.values()), value
    for name in re.findall(r"\{(\w+):[^}]+\}", sql):
        assert name in params, name


# Breakdowns ------------------------------------------------------------------

def test_breakdowns_take_one_or_two_fields_as_segments_do() -> None:
    bd = breakdowns.parse({"breakdown": ["country", "person.plan"], "breakdown_limit": ["3"]})
    assert bd == breakdowns.Breakdown(("country", "person.plan"), 3)
    assert bd.columns == {"country"} and bd.by_person and not bd.by_property
    assert breakdowns.parse({}) is None
    assert breakdowns.parse_body({"breakdown": "properties.plan"}) == breakdowns.Breakdown(("properties.plan",), 10)
    for params, field in (({"breakdown": ["a", "b", "c"]}, "breakdown"), ({"breakdown": ["nope"]}, "breakdown"),
                          ({"breakdown": ["person."]}, "breakdown"), ({"breakdown": ["country", "country"]}, "breakdown"),
                          ({"breakdown": ["country"], "breakdown_limit": ["101"]}, "breakdown_limit"),
                          ({"breakdown_limit": ["0"]}, "breakdown_limit")):
        with pytest.raises(InvalidInput) as exc:
            breakdowns.parse(params)
        assert field_of(exc) == field


def test_a_country_breakdown_reads_the_hourly_rollup_and_a_property_the_events() -> None:
    f = filters(**{"from": "2026-10-01", "to": "2026-10-31", "tz": "Europe/Kyiv"})
    by_country = breakdowns.make(["country"])
    sql, params = stats.events_query(f, "day", ACTORS, by_country)
    assert "FROM actor_hours" in sql
    only_bound(sql, params)
    by_plan = breakdowns.make([f"properties.{'plan'}"])
    sql, params = stats.events_query(f, "day", PERSONS, by_plan)
    assert "FROM events" in sql and PERSONS.key in sql and params["bd_k0"] == "plan"
    sql, _ = stats.active_users_query(f, "week", ACTORS, breakdowns.make(["event_type", "country"]))
    assert "FROM actor_type_hours" in sql
    sql, _ = stats.active_users_query(f, "week", ACTORS, breakdowns.make(["path"]))
    assert "FROM events" in sql


def test_person_breakdowns_join_the_persons_newest_properties() -> None:
    bd = breakdowns.make(["person.plan"], 2)
    assert bd is not None
    sql, params = stats.events_query(filters(), "week", PERSONS, bd)
    assert "person_properties FINAL" in sql and "LEFT ANY JOIN" in sql and params["bd_pk0"] == "plan"
    assert "GROUPING SETS ((b, t), (t))" in breakdowns.split_query(sql, "b", bd)
    assert "NOT has({bd_top:Array(Array(String))}, [bd0])" in breakdowns.others_query(sql, "b", bd)
    assert "vrank <= 2" in breakdowns.ranked(sql, ["b"], bd) and "'$other'" in breakdowns.ranked(sql, ["b"], bd)


def test_values_are_kept_by_users_then_by_text_and_the_rest_is_other() -> None:
    bd = breakdowns.Breakdown(("country",), 2)
    first = [("d1", ["UA"], 5, 3, 0), ("d1", ["DE"], 4, 3, 0), ("d2", ["FR"], 9, 2, 0),
             (None, ["UA"], 5, 3, 1), (None, ["DE"], 4, 3, 1), (None, ["FR"], 9, 2, 1)]
    kept = breakdowns.top(first, bd)
    assert kept == [["DE"], ["UA"]]  # 3 users each: by text; FR has fewer users though more events
    assert breakdowns.assemble(first, kept, [("d2", 9, 2)], bd) == [
        ("d1", ["UA"], 2, 5, 3), ("d1", ["DE"], 1, 4, 3), ("d2", ["$other"], 3, 9, 2)]


def test_retention_split_takes_each_persons_first_event() -> None:
    spec = retention.Retention(date(2026, 9, 7), 4)
    sql, params = retention.retention_query(filters(), spec, ACTORS, breakdowns.make(["country"]))
    assert "min((occurred_at, " in sql and "dense_rank() OVER (ORDER BY vc DESC, t ASC)" in sql
    only_bound(sql, params)


# Funnels ---------------------------------------------------------------------

def body(**extra: Any) -> dict[str, Any]:
    return {"steps": ["signup", {"event_type": HOSTILE, "segment": [f"properties.plan:{HOSTILE}"]}, "purchase"],
            "from": "2026-10-01", "to": "2026-10-31", **extra}


def test_funnel_bodies_parse_windows_orders_and_exclusions() -> None:
    spec = funnel.parse_funnel(body(window={"value": 90, "unit": "minute"}, order="strict",
                                    exclusions=[{"event_type": "support", "from_step": 1, "to_step": 3}],
                                    breakdown=["country"], breakdown_limit=4), PROJECT, 731)
    assert (spec.window_seconds, spec.order, spec.exclusions) == (5400, "strict", (funnel.Exclusion("support", 1, 3),))
    assert spec.breakdown == breakdowns.Breakdown(("country",), 4)
    people = funnel.parse_people(body(step=2, status="dropped", limit=5, offset=10), PROJECT, 731)
    assert (people.step, people.status, people.limit, people.offset) == (2, "dropped", 5, 10)
    for extra, field in (({"window": {"value": 1, "unit": "week"}}, "window"),
                         ({"window": {"value": 2161, "unit": "hour"}}, "window.value"),
                         ({"window_seconds": 60, "window": {"value": 1, "unit": "day"}}, "window"),
                         ({"order": "reverse"}, "order"),
                         ({"exclusions": [{"event_type": "x", "from_step": 3, "to_step": 4}]}, "exclusions[0].from_step"),
                         ({"exclusions": [{"event_type": "", "from_step": 1, "to_step": 2}]}, "exclusions[0].event_type"),
                         ({"exclusions": [{"event_type": "x", "from_step": 1, "to_step": 2}] * 6}, "exclusions"),
                         ({"cohort": 5}, "cohort")):
        with pytest.raises(InvalidInput) as exc:
            funnel.parse_funnel(body(**extra), PROJECT, 731)
        assert field_of(exc) == field


@pytest.mark.parametrize("order", funnel.ORDERS)
def test_funnel_sql_binds_every_value_and_reads_what_the_order_needs(order: str) -> None:
    spec = funnel.parse_funnel(body(order=order, exclusions=[{"event_type": HOSTILE, "from_step": 1, "to_step": 2}],
                                    breakdown="properties.plan"), PROJECT, 731)
    sql, params = funnel.funnel_query(spec, PERSONS)
    only_bound(sql, params, HOSTILE)
    assert params["window"] == 86_400_000
    # strict reads every event of the person (another event breaks it); the others only the steps' and exclusions'
    assert ("AND ((event_type = {t0:String})" in sql) == (order != "strict")
    assert "bitTest(x, 3)" in sql  # the exclusion's bit, after the three steps'
    assert "quantileExactInclusiveState(0.5)(d)" in sql and "quantileExactInclusiveMerge(0.5)(q)" in sql


def test_people_of_a_step_are_paged_in_a_stable_order() -> None:
    request = funnel.parse_people(body(step=3, status="dropped", breakdown="country", breakdown_value=["UA"]),
                                  PROJECT, 731)
    sql, params = funnel.people_query(request, ACTORS)
    assert "level = {step:UInt8} - 1" in sql and "breakdown = {value:Array(String)}" in sql
    assert sql.rstrip().endswith("ORDER BY times[1], person LIMIT {limit:UInt32} OFFSET {offset:UInt32}")
    assert params["value"] == ["UA"] and params["step"] == 3


# Paths, stickiness, lifecycle --------------------------------------------------

def test_paths_parse_and_bind() -> None:
    f = filters()
    spec = paths.parse_paths({"end": [HOSTILE], "steps": ["5"], "min_users": ["2"], "pages": ["true"]}, f)
    assert (spec.anchor, spec.forward, spec.steps, spec.min_users, spec.pages) == (HOSTILE, False, 5, 2, True)
    sql, params = paths.paths_query(spec, ACTORS)
    only_bound(sql, params, HOSTILE)
    assert "arrayLastIndex" in sql and "arrayReverse" in sql and params["steps"] == 6
    for params_, field in (({}, "start"), ({"start": ["a"], "end": ["b"]}, "start"), ({"start": ["a"], "steps": ["9"]},
                           "steps"), ({"start": [""]}, "start"), ({"start": ["a"], "pages": ["yes"]}, "pages")):
        with pytest.raises(InvalidInput) as exc:
            paths.parse_paths(params_, f)
        assert field_of(exc) == field


def test_paths_edges_run_in_time_order() -> None:
    spec = paths.Paths(filters(), "purchase", forward=False, min_users=2)
    rows = [(0, 0, ("purchase", ""), ("", ""), 5, 7), (0, -1, ("signup", ""), ("", ""), 3, 3),
            (1, 0, ("purchase", ""), ("signup", ""), 3, 0), (0, -1, ("click", ""), ("", ""), 1, 1)]
    answer = paths.shape(spec, rows)
    assert [n["id"] for n in answer["nodes"]] == ["-1:signup", "0:purchase"]
    assert answer["edges"] == [{"from": "-1:signup", "to": "0:purchase", "users": 3}]


def test_stickiness_and_lifecycle_read_rollups_on_whole_hours() -> None:
    f = filters(**{"from": "2026-10-01", "to": "2026-10-31", "segment": "country:UA"})
    sql, _ = stickiness.stickiness_query(f, "week", ACTORS)
    assert "FROM actor_hours" in sql and "uniqExact(toMonday(hour" in sql
    sql, params = lifecycle.lifecycle_query(f, "month", PERSONS)
    assert "FROM actor_hours" in sql and params["first"] == date(2026, 10, 1) and params["last"] == date(2026, 10, 1)
    assert params["f_start"] == datetime(2026, 9, 1)  # the bucket before the range: returning and dormant need it
    minutes = filters(**{"from": "2026-10-01T10:30:00Z", "to": "2026-10-31"})
    assert "FROM events" in stickiness.stickiness_query(minutes, "day", ACTORS)[0]


def test_lifecycle_buckets_cover_the_range() -> None:
    f = filters(**{"from": "2026-01-30", "to": "2026-03-02"})
    assert lifecycle.buckets(f, "month") == [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)]
    assert lifecycle.buckets(f, "week")[0] == date(2026, 1, 26) and lifecycle.buckets(f, "week")[-1] == date(2026, 3, 2)
    assert lifecycle.step(date(2026, 12, 1), "month") == date(2027, 1, 1)
    assert lifecycle.step(date(2026, 1, 1), "month", -1) == date(2025, 12, 1)
    shaped = lifecycle.shape(f, "month", [(date(2026, 2, 1), "new", 4)])
    assert shaped[1] == {"bucket": "2026-02-01", "new": 4, "returning": 0, "resurrecting": 0, "dormant": 0}
    assert len(shaped) == 3


# Cohorts ---------------------------------------------------------------------

def test_cohort_bodies() -> None:
    new = cohorts.parse_new({"name": " Beta ", "users": ["a", "b", "a"]})
    assert (new.name, new.users, new.kind) == ("Beta", ("a", "b"), "static")
    new = cohorts.parse_new({"name": "Buyers", "definition": {"event_type": "purchase", "min_count": 2, "days": 30,
                                                              "segment": ["country:UA"], "negate": True}})
    assert new.kind == "behavioural" and new.behaviour == cohorts.Behaviour(
        "purchase", 2, 30, (cohorts.Segment("country", "UA"),), True)
    assert cohorts.parse_new({"name": "f", "funnel": {"steps": ["a", "b"], "step": 2}}).funnel is not None
    for raw, field in (({"name": "x"}, "users"), ({"name": "", "users": ["a"]}, "name"),
                       ({"name": "x", "users": ["a"] * 10_001}, "users"),
                       ({"name": "x", "definition": {"event_type": "a", "min_count": 1, "days": 0}}, "definition.days"),
                       ({"name": "x", "definition": {"event_type": "a", "min_count": 1, "days": 1, "negate": "no"}},
                        "definition.negate")):
        with pytest.raises(InvalidInput) as exc:
            cohorts.parse_new(raw)
        assert field_of(exc) == field


def test_a_cohort_is_one_term_anded_with_the_segments() -> None:
    static = cohorts.StaticCohort("00000000-0000-0000-0000-0000000000aa")
    f = filters(segment="country:UA")
    from dataclasses import replace

    where, params = stats.condition(replace(f, cohort=static))
    assert where.endswith("AND " + static.term("f_c", "f_project")[0])
    assert params["f_c_id"] == static.cohort_id and "country = {f_sv0:String}" in where
    doers = cohorts.BehaviouralCohort(cohorts.Behaviour(HOSTILE, 3, 7, negate=True), NOW)
    term, params = doers.term("f_c", "f_project")
    only_bound(term, {**params, "f_project": PROJECT}, HOSTILE)
    assert f"{PERSON} GLOBAL NOT IN" in term and params["f_c_since"] == datetime(2026, 11, 15, 12, 0)
    assert params["f_c_now"] == datetime(2026, 11, 22, 12, 0) and params["f_c_min"] == 3
    sql, params = cohorts.members_from_ids(PROJECT, static.cohort_id, [HOSTILE])
    only_bound(sql, params, HOSTILE)
