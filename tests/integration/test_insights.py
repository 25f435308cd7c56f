"""Breakdowns, funnel modes, paths, stickiness, lifecycle and cohorts against
answers computed in plain Python (stats_oracle) over the seeded event set,
sent through the real ingest path with its identity calls."""

from __future__ import annotations

import random
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


# Funnels ---------------------------------------------------------------------

FUNNEL_STEPS = ["signup", "activate", "purchase"]
FUNNELS: list[dict[str, Any]] = [
    {"steps": FUNNEL_STEPS, "window_seconds": 3600},
    {"steps": FUNNEL_STEPS, "window_seconds": 3600, "order": "strict"},
    {"steps": FUNNEL_STEPS, "window_seconds": 3600, "order": "any"},
    {"steps": FUNNEL_STEPS, "window": {"value": 2, "unit": "day"}},
    {"steps": FUNNEL_STEPS, "window": {"value": 90, "unit": "minute"},
     "exclusions": [{"event_type": "support", "from_step": 1, "to_step": 2}]},
    {"steps": FUNNEL_STEPS, "window": {"value": 2, "unit": "hour"},
     "exclusions": [{"event_type": "support", "from_step": 2, "to_step": 3},
                    {"event_type": "click", "from_step": 1, "to_step": 3}]},
    {"steps": FUNNEL_STEPS, "window": {"value": 2, "unit": "day"}, "order": "any",
     "exclusions": [{"event_type": "support", "from_step": 1, "to_step": 2}]},
    {"steps": ["page_view", "click", "signup"], "window_seconds": 7 * 86_400, "order": "strict",
     "segment": ["country:UA"]},
    {"steps": ["signup", {"event_type": "activate", "segment": ["properties.plan:pro"]}, "purchase"],
     "window_seconds": 86_400, "order": "any"},
    {"steps": FUNNEL_STEPS, "window_seconds": 3600, "breakdown": "country"},
    {"steps": FUNNEL_STEPS, "window_seconds": 86_400, "breakdown": ["person.plan"], "order": "strict"},
    {"steps": FUNNEL_STEPS, "window_seconds": 86_400, "breakdown": ["properties.plan", "country"],
     "breakdown_limit": 2, "order": "any"},
]


def funnel_spec(body: dict[str, Any]) -> dict[str, Any]:
    """The oracle's arguments for a funnel body."""
    window = body.get("window_seconds") or body["window"]["value"] * {"minute": 60, "hour": 3600, "day": 86_400}[
        body["window"]["unit"]]
    steps = [(s, []) if isinstance(s, str) else (s["event_type"], [tuple(x.split(":", 1)) for x in s["segment"]])
             for s in body["steps"]]
    fields = body.get("breakdown")
    return {"steps": steps, "window_s": window, "order": body.get("order", "ordered"),
            "exclusions": [(x["event_type"], x["from_step"], x["to_step"]) for x in body.get("exclusions", [])],
            "fields": [fields] if isinstance(fields, str) else fields}


@pytest.mark.parametrize("body", FUNNELS)
def test_funnel_modes(seeded: Seeded, body: dict[str, Any]) -> None:
    answer = seeded.api.post("/v1/stats/funnel", {**body, **seeded.range("UTC")})
    assert answer.status == 200, answer.body[:500]
    spec = funnel_spec(body)
    events = seeded.select("UTC", [tuple(x.split(":", 1)) for x in body.get("segment", [])])
    want = oracle.funnel_full(events, spec["steps"], spec["window_s"], spec["order"], spec["exclusions"],
                              spec["fields"], body.get("breakdown_limit", 10))
    assert answer.json == want


def test_funnel_modes_are_discriminating(seeded: Seeded) -> None:
    events = seeded.select("UTC")
    steps = [(s, []) for s in FUNNEL_STEPS]
    last = {order: oracle.funnel_full(events, steps, 3600, order)["steps"][2]["users"]
            for order in ("ordered", "strict", "any")}
    assert last["strict"] < last["ordered"] < last["any"], last
    plain = oracle.funnel_full(events, steps, 5400)["steps"][0]["users"]
    excluded = oracle.funnel_full(events, steps, 5400, exclusions=[("support", 1, 2)])["steps"][0]["users"]
    assert excluded < plain
    walks = oracle.funnel_walks(events, steps, 3600)
    assert walks["m6"].level == 3 and walks["m6"].times[0] > min(oracle.ms(e.at) for e in events
                                                                 if e.actor == "m6" and e.event_type == "signup")
    rows = oracle.funnel_full(events, steps, 3600)["steps"]
    assert rows[1]["median_seconds_to_convert"] != rows[1]["mean_seconds_to_convert"]


@pytest.mark.parametrize(("body", "step", "status"), [
    (FUNNELS[0], 2, "converted"), (FUNNELS[0], 3, "dropped"), (FUNNELS[2], 3, "converted"),
    (FUNNELS[5], 2, "dropped"), (FUNNELS[9], 1, "converted")])
def test_funnel_people(seeded: Seeded, body: dict[str, Any], step: int, status: str) -> None:
    request = {**body, **seeded.range("UTC"), "step": step, "status": status, "limit": 1000}
    answer = seeded.api.post("/v1/stats/funnel/people", request)
    assert answer.status == 200, answer.body[:500]
    spec = funnel_spec(body)
    walks = oracle.funnel_walks(seeded.select("UTC"), spec["steps"], spec["window_s"], spec["order"],
                                spec["exclusions"], spec["fields"])
    want = oracle.funnel_people(seeded.data, seeded.project_id, walks, step, status)
    assert sorted(answer.json, key=lambda r: r["person_id"]) == want
    assert want, "the case selects someone"
    # pages of 3 make the same list, in the same order
    pages: list[Any] = []
    for offset in range(0, len(want) + 3, 3):
        page = seeded.api.post("/v1/stats/funnel/people", {**request, "limit": 3, "offset": offset}).json
        pages += page
    assert pages == answer.json


DENSE_FUNNELS = [
    (["a", "b", "c"], 600, "ordered", []), (["a", "b", "c"], 3600, "strict", []), (["a", "b", "c"], 900, "any", []),
    (["a", "b", "a"], 1200, "ordered", []), (["a", "b", "a"], 1200, "strict", []), (["a", "a", "b"], 1800, "any", []),
    (["a", "a", "b", "c"], 2400, "ordered", [("d", 1, 3)]), (["b", "c"], 60, "strict", [("a", 1, 2)]),
]


def test_funnels_over_dense_histories_with_ties_and_repeated_steps(pulse: Any, project: Any) -> None:
    """Persons with hundreds of events, many sharing a millisecond, funnels whose
    steps repeat a type (one event may be two steps): every order against the
    oracle, which walks each attempt event by event."""
    from tests.conftest import make_event, wait_persisted

    rng = random.Random(11)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    instants = sorted(rng.sample(range(0, 2 * 3600 * 1000), 400))
    events = []
    for person in range(12):
        for _ in range(rng.randrange(20, 220)):
            at = base + timedelta(milliseconds=rng.choice(instants))
            events.append(oracle.Event(str(uuid.uuid4()), rng.choice("aabbcd"), f"dense-{person}", "", "", at, {},
                                       "", ""))
            events[-1].person = events[-1].user_id
    for start in range(0, len(events), 500):
        batch = [make_event(event_id=e.event_id, event_type=e.event_type, user_id=e.user_id,
                            occurred_at=e.at.isoformat()) for e in events[start:start + 500]]
        assert project.api.post("/v1/events", {"events": batch}).status == 202
    wait_persisted(pulse)
    for steps, window, order, exclusions in DENSE_FUNNELS:
        body = {"steps": steps, "window_seconds": window, "order": order,
                "exclusions": [{"event_type": t, "from_step": a, "to_step": b} for t, a, b in exclusions]}
        answer = project.api.post("/v1/stats/funnel", body)
        assert answer.status == 200, answer.body[:300]
        want = oracle.funnel_full(events, [(s, []) for s in steps], window, order, exclusions)
        assert answer.json == want, body
        assert want["steps"][1]["users"] > 0, body


def test_funnel_people_of_a_breakdown_value(seeded: Seeded) -> None:
    body = {**FUNNELS[11], **seeded.range("UTC")}
    spec = funnel_spec(FUNNELS[11])
    walks = oracle.funnel_walks(seeded.select("UTC"), spec["steps"], spec["window_s"], spec["order"],
                                spec["exclusions"], spec["fields"])
    ranks = oracle.top_values(oracle.Counter(w.value for w in walks.values()), 2)
    for value in [*ranks, ("$other", "$other")]:
        answer = seeded.api.post("/v1/stats/funnel/people", {**body, "step": 2, "status": "converted",
                                                              "breakdown_value": list(value), "limit": 1000})
        assert answer.status == 200, answer.body[:300]
        want = oracle.funnel_people(seeded.data, seeded.project_id, walks, 2, "converted", value, ranks)
        assert sorted(answer.json, key=lambda r: r["person_id"]) == want


@pytest.mark.parametrize(("body", "field"), [
    ({"order": "sideways"}, "order"), ({"window": {"value": 3, "unit": "week"}}, "window"),
    ({"window": {"value": 91, "unit": "day"}}, "window.value"),
    ({"window": {"value": 1, "unit": "day"}, "window_seconds": 60}, "window"),
    ({"exclusions": [{"event_type": "x", "from_step": 2, "to_step": 2}]}, "exclusions[0].to_step"),
    ({"exclusions": [{"event_type": "x", "from_step": 0, "to_step": 2}]}, "exclusions[0].from_step"),
    ({"exclusions": [{"event_type": "x", "from_step": 1}]}, "exclusions[0]"),
    ({"breakdown": ["a", "b"]}, "breakdown"), ({"breakdown_limit": 0, "breakdown": "country"}, "breakdown_limit"),
])
def test_bad_funnel_bodies_name_the_field(seeded: Seeded, body: dict[str, Any], field: str) -> None:
    answer = seeded.api.post("/v1/stats/funnel", {"steps": FUNNEL_STEPS, **body})
    assert answer.status == 400, answer.body[:300]
    assert answer.json["errors"][0]["field"] == field


@pytest.mark.parametrize(("extra", "field"), [({"step": 4}, "step"), ({"step": 1, "status": "dropped"}, "step"),
                                              ({"step": 2, "status": "gone"}, "status"),
                                              ({"step": 2, "breakdown_value": ["x"]}, "breakdown_value"),
                                              ({"step": 2, "limit": 0}, "limit")])
def test_bad_people_requests_name_the_field(seeded: Seeded, extra: dict[str, Any], field: str) -> None:
    answer = seeded.api.post("/v1/stats/funnel/people", {"steps": FUNNEL_STEPS, **extra})
    assert answer.status == 400, answer.body[:300]
    assert answer.json["errors"][0]["field"] == field


# Paths, stickiness, lifecycle --------------------------------------------------

PATHS = [{"start": "signup"}, {"start": "page_view", "steps": "5"}, {"end": "purchase", "steps": "2"},
         {"start": "signup", "min_users": "3"}, {"start": "/pricing", "pages": "true", "steps": "4"},
         {"end": "signup", "pages": "true", "min_users": "2"}, {"start": "click", "steps": "1"}]


@pytest.mark.parametrize("params", PATHS)
@pytest.mark.parametrize("segments", [[], [("country", "DE")]])
def test_paths(seeded: Seeded, params: dict[str, str], segments: list[tuple[str, str]]) -> None:
    got = seeded.get("/v1/stats/paths", segment=segs(segments), **params, **seeded.range("UTC"))
    anchor = params.get("start") or params["end"]
    want = oracle.paths(seeded.select("UTC", segments), anchor, "start" in params, int(params.get("steps", 3)),
                        int(params.get("min_users", 1)), params.get("pages") == "true")
    assert got == want
    assert got["nodes"] and (got["edges"] or params.get("steps") == "1")


def test_paths_collapse_repeats_and_cut_below_min_users(seeded: Seeded) -> None:
    events = seeded.select("UTC")
    full = oracle.paths(events, "page_view", steps=5)
    assert any(n["events"] > n["users"] for n in full["nodes"]), "repeats collapsed into one node"
    cut = oracle.paths(events, "page_view", steps=5, min_users=5)
    assert len(cut["nodes"]) < len(full["nodes"]) and len(cut["edges"]) < len(full["edges"])


@pytest.mark.parametrize(("interval", "tz", "event_type", "segments"), [
    ("day", "UTC", None, []), ("week", "Europe/Kyiv", "page_view", []), ("month", "UTC", "click", [("country", "UA")]),
    ("day", "Europe/Kyiv", None, [("properties.plan", "pro")])])
def test_stickiness(seeded: Seeded, interval: str, tz: str, event_type: str | None,
                    segments: list[tuple[str, str]]) -> None:
    params: dict[str, Any] = {"interval": interval, "segment": segs(segments), **seeded.range(tz)}
    if event_type:
        params["event_type"] = event_type
    got = seeded.get("/v1/stats/stickiness", **params)
    assert got == oracle.stickiness(seeded.select(tz, segments, event_type), interval, tz)
    assert len(got) > 1


@pytest.mark.parametrize(("interval", "tz", "days", "event_type", "segments"), [
    ("day", "UTC", 20, None, []), ("week", "Europe/Kyiv", 70, None, []), ("month", "UTC", 80, "page_view", []),
    ("week", "UTC", 40, "click", [("country", "DE")]), ("day", "Europe/Kyiv", 9, None, [("properties.plan", "free")])])
def test_lifecycle(seeded: Seeded, interval: str, tz: str, days: int, event_type: str | None,
                   segments: list[tuple[str, str]]) -> None:
    last = datetime.now(ZoneInfo(tz)).date()
    first = last - timedelta(days=days)
    params: dict[str, Any] = {"interval": interval, "segment": segs(segments), "from": first.isoformat(),
                              "to": last.isoformat(), "tz": tz}
    if event_type:
        params["event_type"] = event_type
    got = seeded.get("/v1/stats/lifecycle", **params)
    assert got == oracle.lifecycle(seeded.data, first, last, interval, tz, segments, event_type)
    kinds = ("new", "returning", "resurrecting", "dormant")
    assert sum(r[k] for r in got for k in kinds) > 0
    if interval == "week" and not segments:  # every kind occurs
        assert all(sum(r[k] for r in got) > 0 for k in kinds), got


def test_rollups_answer_stickiness_and_lifecycle_as_the_events_table(pulse: Any, seeded: Seeded) -> None:
    from pulse.core import lifecycle, stickiness
    from pulse.core.filters import parse_filters

    ch = pulse.services.ch
    for segment in ([], ["country:UA"], ["event_type:click"]):
        filters = parse_filters({**{k: [v] for k, v in seeded.range("Europe/Kyiv").items()}, "segment": segment},
                                seeded.project_id, 731)
        for interval in ("day", "week", "month"):
            assert stickiness.stickiness(ch, filters, interval) == stickiness.stickiness(ch, filters, interval, False)
            assert lifecycle.lifecycle(ch, filters, interval) == lifecycle.lifecycle(ch, filters, interval, False)


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/stats/paths", {}, "start"), ("/v1/stats/paths", {"start": "a", "end": "b"}, "start"),
    ("/v1/stats/paths", {"start": "a", "steps": "6"}, "steps"), ("/v1/stats/paths", {"start": "a", "steps": "0"}, "steps"),
    ("/v1/stats/paths", {"start": "a", "min_users": "x"}, "min_users"),
    ("/v1/stats/paths", {"start": "a", "pages": "maybe"}, "pages"),
    ("/v1/stats/stickiness", {"interval": "year"}, "interval"), ("/v1/stats/lifecycle", {"interval": "hour"}, "interval"),
])
def test_bad_parameters_name_the_field(seeded: Seeded, path: str, params: dict[str, str], field: str) -> None:
    from urllib.parse import urlencode

    answer = seeded.api.get(path + "?" + urlencode(params))
    assert answer.status == 400, answer.body[:300]
    assert answer.json["errors"][0]["field"] == field


# Cohorts ---------------------------------------------------------------------

STATIC = ["u1", "u5", "visitor-3", "anon-2", "chain-a", "f2", "m6", "nobody-at-all"]


def make_cohort(seeded: Seeded, body: dict[str, Any]) -> str:
    answer = seeded.api.post("/v1/cohorts", body)
    assert answer.status == 201, answer.body[:500]
    return str(answer.json["cohort_id"])


def cohort_cases(seeded: Seeded, cohort_id: str, persons: set[str]) -> None:
    """Every stats endpoint with ``cohort=`` (and a segment besides) answers as the oracle over the cohort's persons."""
    data = oracle.within(seeded.data, persons)
    first, last = seeded.first, seeded.last
    events = oracle.select(data, first, last, "UTC")
    assert events, "the cohort has events"
    get = lambda path, **p: seeded.get(path, cohort=cohort_id, **p, **seeded.range("UTC"))  # noqa: E731
    assert get("/v1/stats/events", group_by="day") == oracle.events_by(events, "day", "UTC")
    assert get("/v1/stats/events", group_by="week", breakdown="country") == \
        oracle.events_split(events, "week", "UTC", ["country"])
    assert get("/v1/stats/active-users", interval="week") == oracle.active(events, "week", "UTC")
    assert get("/v1/stats/top-events", limit="20") == oracle.top_events(events, 20)
    assert get("/v1/stats/pages") == oracle.pages(events, 10)
    assert get("/v1/stats/overview") == oracle.overview(oracle.select(data, first, last, "UTC", include_bots=True))
    assert get("/v1/stats/dau", segment="country:UA") == [
        {"date": r["bucket"], "unique_users": r["unique_users"]}
        for r in oracle.active(oracle.select(data, first, last, "UTC", [("country", "UA")]), "day", "UTC")]
    assert get("/v1/stats/stickiness", interval="week") == oracle.stickiness(events, "week", "UTC")
    assert get("/v1/stats/paths", start="page_view") == oracle.paths(events, "page_view")
    assert get("/v1/stats/lifecycle", interval="week") == oracle.lifecycle(data, first, last, "week", "UTC")
    today = datetime.now(UTC).date()
    start = today - timedelta(weeks=9)
    assert seeded.get("/v1/stats/retention", cohort=cohort_id, start_date=start.isoformat(), windows="9") == \
        oracle.retention(data, start, 9, "UTC", today)
    body = {**FUNNELS[0], **seeded.range("UTC"), "cohort": cohort_id}
    spec = funnel_spec(FUNNELS[0])
    assert seeded.api.post("/v1/stats/funnel", body).json == oracle.funnel_full(events, spec["steps"], spec["window_s"])


def test_a_static_cohort_filters_every_endpoint(seeded: Seeded) -> None:
    cohort_id = make_cohort(seeded, {"name": "Early birds", "users": STATIC})
    persons = oracle.static_cohort(seeded.data, STATIC)
    assert len(persons) == len(STATIC) and oracle.person_of_id(seeded.data, "visitor-3") != "visitor-3"
    cohort_cases(seeded, cohort_id, persons)
    listed = {c["cohort_id"]: c for c in seeded.get("/v1/cohorts")}
    assert listed[cohort_id]["name"] == "Early birds" and listed[cohort_id]["kind"] == "static"
    assert listed[cohort_id]["members"] == len(STATIC)


@pytest.mark.parametrize("definition", [
    {"event_type": "purchase", "min_count": 1, "days": 30},
    {"event_type": "page_view", "min_count": 3, "days": 60, "segment": ["country:UA"]},
    {"event_type": "click", "min_count": 2, "days": 45, "negate": True},
])
def test_a_behavioural_cohort_is_evaluated_at_query_time(seeded: Seeded, definition: dict[str, Any]) -> None:
    cohort_id = make_cohort(seeded, {"name": "Doers", "definition": definition})
    segments = [tuple(s.split(":", 1)) for s in definition.get("segment", [])]

    def persons(now: datetime) -> set[str]:
        return oracle.behavioural_cohort(seeded.data, now, definition["event_type"], definition["min_count"],
                                         definition["days"], segments, definition.get("negate", False))

    before = persons(datetime.now(UTC))
    try:
        cohort_cases(seeded, cohort_id, before)
    except AssertionError:  # an event crossed the window's edge while the test ran: the later set then
        cohort_cases(seeded, cohort_id, persons(datetime.now(UTC)))
    everyone = {e.person for e in seeded.data.events}
    assert 0 < len(before) < len(everyone)


def test_a_cohort_from_a_funnel_step(seeded: Seeded) -> None:
    funnel_body = {**FUNNELS[0], **seeded.range("UTC"), "step": 2, "status": "converted"}
    answer = seeded.api.post("/v1/cohorts", {"name": "Activated", "funnel": funnel_body})
    assert answer.status == 201, answer.body[:500]
    spec = funnel_spec(FUNNELS[0])
    walks = oracle.funnel_walks(seeded.select("UTC"), spec["steps"], spec["window_s"])
    persons = {p for p, w in walks.items() if w.level >= 2}
    assert answer.json["members"] == len(persons) and answer.json["kind"] == "static"
    assert answer.json["definition"] == {"funnel": funnel_body}
    cohort_cases(seeded, answer.json["cohort_id"], persons)
    dropped = seeded.api.post("/v1/cohorts", {"name": "Dropped", "funnel": {**funnel_body, "status": "dropped"}})
    assert dropped.json["members"] == sum(1 for w in walks.values() if w.level == 1)
    bad = seeded.api.post("/v1/cohorts", {"name": "x", "funnel": {**funnel_body, "step": 9}})
    assert bad.status == 400 and bad.json["errors"][0]["field"] == "funnel.step"


def test_a_link_made_after_the_cohort_brings_its_events_in(pulse: Any, project: Any) -> None:
    from tests.conftest import make_event, wait_persisted

    api = project.api
    now = datetime.now(UTC)
    events = [make_event(user_id=None, anonymous_id="anon-z", event_type="page_view",
                         occurred_at=(now - timedelta(hours=3)).isoformat()),
              make_event(user_id="user-z", event_type="purchase", occurred_at=(now - timedelta(hours=2)).isoformat()),
              make_event(user_id="user-y", event_type="purchase", occurred_at=(now - timedelta(hours=2)).isoformat())]
    assert api.post("/v1/events", {"events": events}).status == 202
    wait_persisted(pulse)
    cohort_id = api.post("/v1/cohorts", {"name": "z", "users": ["anon-z"]}).json["cohort_id"]
    top = api.get(f"/v1/stats/top-events?cohort={cohort_id}").json
    assert top == [{"event_type": "page_view", "count": 1, "users": 1}]
    assert api.post("/v1/identify", {"anonymous_id": "anon-z", "user_id": "user-z"}).status in (200, 202)
    wait_persisted(pulse)
    top = api.get(f"/v1/stats/top-events?cohort={cohort_id}").json
    assert top == [{"event_type": t, "count": 1, "users": 1} for t in ("$identify", "page_view", "purchase")]
    assert api.get(f"/v1/stats/overview?cohort={cohort_id}").json["unique_users"] == 1


def test_cohorts_stay_in_their_project(seeded: Seeded, project: Any) -> None:
    cohort_id = make_cohort(seeded, {"name": "Mine", "users": ["u1"]})
    answer = project.api.get(f"/v1/stats/overview?cohort={cohort_id}")
    assert answer.status == 400 and answer.json["errors"][0]["field"] == "cohort"
    assert project.api.get(f"/v1/cohorts/{cohort_id}").status == 404
    assert project.api.request("DELETE", f"/v1/cohorts/{cohort_id}").status == 404
    assert all(c["cohort_id"] != cohort_id for c in project.api.get("/v1/cohorts").json)
    assert seeded.api.get(f"/v1/cohorts/{cohort_id}").status == 200


def test_a_deleted_cohort_filters_nothing_any_more(seeded: Seeded) -> None:
    cohort_id = make_cohort(seeded, {"name": "Gone soon", "users": ["u2"]})
    assert seeded.api.request("DELETE", f"/v1/cohorts/{cohort_id}").status == 204
    answer = seeded.api.get(f"/v1/stats/top-events?cohort={cohort_id}")
    assert answer.status == 400 and answer.json["errors"][0]["field"] == "cohort"
    assert seeded.api.get(f"/v1/cohorts/{cohort_id}").status == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"users": ["a"]}, "name"), ({"name": "x"}, "users"), ({"name": "x", "users": []}, "users"),
    ({"name": "x", "users": ["a"], "definition": {}}, "users"), ({"name": "x", "users": [""]}, "users[0]"),
    ({"name": "x", "definition": {"event_type": "a", "min_count": 0, "days": 3}}, "definition.min_count"),
    ({"name": "x", "definition": {"event_type": "a", "min_count": 1, "days": 800}}, "definition.days"),
    ({"name": "x", "definition": {"event_type": "a", "min_count": 1, "days": 3, "segment": ["bad"]}},
     "definition.segment"),
    ({"name": "x", "definition": {"event_type": "a"}}, "definition"), ({"name": "x", "color": "red"}, "color"),
])
def test_bad_cohorts_name_the_field(seeded: Seeded, body: dict[str, Any], field: str) -> None:
    answer = seeded.api.post("/v1/cohorts", body)
    assert answer.status == 400, answer.body[:300]
    assert answer.json["errors"][0]["field"] == field


def test_a_cohort_parameter_must_be_an_id(seeded: Seeded) -> None:
    for value in ("nope", str(uuid.uuid4())):
        answer = seeded.api.get(f"/v1/stats/events?cohort={value}")
        assert answer.status == 400 and answer.json["errors"][0]["field"] == "cohort"


# The overview from the span tables ---------------------------------------------

@pytest.mark.parametrize(("after_first", "before_last", "tz"), [(0, 0, "UTC"), (0, 30, "Europe/Kyiv"),
                                                                (30, 0, "UTC"), (40, 15, "Europe/Kyiv")])
@pytest.mark.parametrize("segment", [[], [("country", "DE")], [("country", "UA"), ("country", "UA")],
                                     [("country", "")], [("country", "DE"), ("country", "FR")],
                                     [("country", "US"), ("event_type", "click")]])
def test_the_overview_reads_spans_where_they_hold_and_answers_as_the_events_table(
        pulse: Any, seeded: Seeded, after_first: int, before_last: int, tz: str,
        segment: list[tuple[str, str]]) -> None:
    """Sessions of the seeds carry events from several countries over days, so a
    session's span in one country differs from its whole span."""
    from pulse.core import stats
    from pulse.core.filters import parse_filters

    ch = pulse.services.ch
    first, last = seeded.first + timedelta(days=after_first), seeded.last - timedelta(days=before_last)
    f = parse_filters({"from": [first.isoformat()], "to": [last.isoformat()], "tz": [tz],
                       "segment": segs(segment)}, seeded.project_id, 731)
    who = stats.resolver(ch, seeded.project_id)
    fast = stats.overview_from_spans(ch, f, who)
    times = [e.at for e in seeded.data.events]
    one_country = len({v for _, v in segment}) <= 1 and all(k == "country" for k, _ in segment)
    assert (fast is not None) == (one_country and (f.start <= min(times) or f.end > max(times)))
    assert stats.overview(ch, f) == stats.overview(ch, f, rollups=False)
    everything = oracle.select(seeded.data, first, last, tz, segment, include_bots=True)
    assert stats.overview(ch, f) == oracle.overview(everything)


def test_sessions_in_several_parts_are_counted_once(pulse: Any, project: Any) -> None:
    """A session whose events came in several inserts has a row in each part until
    they merge: counted once, as after the merge, and as when the table is merged
    into one part; so too a session's span in one country (the inserts' countries
    alternate, the last two sessions have none from France)."""
    from pulse.core import stats
    from pulse.core.filters import parse_filters

    ch = pulse.services.ch
    now = datetime.now(UTC)
    ch.command("SYSTEM STOP MERGES session_spans")  # else a background merge may join the parts first
    try:
        parts_of_one_session(pulse, project, now)
    finally:
        ch.command("SYSTEM START MERGES session_spans")
    f = parse_filters({}, project.project_id, 731)
    ch.command("OPTIMIZE TABLE session_spans FINAL")
    assert ch.rows("SELECT count() FROM session_spans WHERE project_id = {p:UUID}", {"p": project.project_id})[0][0] == 4
    assert stats.overview(ch, f)["unique_sessions"] == 4
    de, fr = (parse_filters({"segment": [f"country:{c}"]}, project.project_id, 731) for c in ("DE", "FR"))
    assert [stats.overview(ch, g)["unique_sessions"] for g in (de, fr)] == [4, 2]


def parts_of_one_session(pulse: Any, project: Any, now: datetime) -> None:
    from pulse.core import rollups, stats
    from pulse.core.filters import parse_filters
    from tests.conftest import make_event, wait_persisted

    ch = pulse.services.ch
    for batch in range(3):
        events = [make_event(user_id=f"s-user-{n}", session_id=f"s-{n % 4}",
                             context={"country": "DE" if batch != 1 or n % 4 > 1 else "FR"},
                             occurred_at=(now - timedelta(hours=batch + 1, minutes=n)).isoformat())
                  for n in range(8)]
        assert project.api.post("/v1/events", {"events": events}).status == 202
        wait_persisted(pulse)
    f = parse_filters({}, project.project_id, 731)
    parts, largest = ch.rows(rollups.session_parts(ch.layout))[0]
    rows = ch.rows("SELECT count() FROM session_spans WHERE project_id = {p:UUID}", {"p": project.project_id})[0][0]
    assert parts > 1 and rows > 4, "the case is one session in several parts"
    assert stats.overview(ch, f)["unique_sessions"] == 4 == stats.overview(ch, f, rollups=False)["unique_sessions"]
    de, fr = (parse_filters({"segment": [f"country:{c}"]}, project.project_id, 731) for c in ("DE", "FR"))
    assert stats.overview_from_spans(ch, de, stats.resolver(ch, project.project_id)) is not None
    assert stats.overview(ch, de)["unique_sessions"] == 4 == stats.overview(ch, de, rollups=False)["unique_sessions"]
    assert stats.overview(ch, fr)["unique_sessions"] == 2 == stats.overview(ch, fr, rollups=False)["unique_sessions"]
    for cluster in (False, True):
        for reaches, count in ((rollups.SPAN_REACHES, 4), (rollups.country_reaches("country"), 2)):
            sessions, extra = rollups.sessions_reaching(str(largest), cluster, reaches)
            where, params = stats.condition(f, time_column=None)
            assert ch.rows(f"SELECT {sessions} FROM session_spans WHERE {where}",
                           {**params, **extra, "country": "FR"})[0][0] == count
