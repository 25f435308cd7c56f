"""Every stats endpoint against answers computed in plain Python over a seeded
event set sent through the real ingest path (duplicates included)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import orjson
import pytest
import urllib3

from tests.conftest import Api, Project, make_event, wait_persisted
from tests.integration import stats_oracle as oracle

TZS = ("UTC", "Europe/Kyiv")


class Seeded:
    def __init__(self, api: Api, data: oracle.Dataset, project_id: str) -> None:
        self.api = api
        self.data = data
        self.project_id = project_id
        self.first = (data.now - timedelta(days=80)).date()
        self.last = data.now.date()

    def get(self, path: str, **params: Any) -> Any:
        pairs = []
        for name, value in params.items():
            for item in value if isinstance(value, list) else [value]:
                pairs.append((name, item))
        answer = self.api.get(path + ("?" + urlencode(pairs) if pairs else ""))
        assert answer.status == 200, (path, params, answer.status, answer.body[:500])
        assert answer.headers["Content-Type"].startswith("application/json")
        return answer.json

    def range(self, tz: str) -> dict[str, str]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat(), "tz": tz}

    def select(self, tz: str, segments: list[tuple[str, str]] = (), event_type: str | None = None,
               include_bots: bool = False) -> list[Any]:
        return oracle.select(self.data, self.first, self.last, tz, segments, event_type, include_bots)


@pytest.fixture(scope="module")
def seeded(pulse: Any) -> Seeded:
    from pulse.local.demo import create_demo_key

    project_id, key = create_demo_key(pulse.services, f"stats-{uuid.uuid4().hex[:8]}")
    api = Api(pulse.gateway_url, key)
    data = oracle.build(datetime.now(UTC))
    send_dataset(pulse, api, data)
    return Seeded(api, data, project_id)


def send_dataset(pulse: Any, api: Api, data: oracle.Dataset) -> None:
    """The events, then the identity calls phase by phase (each persisted before
    the next: the order of conflicting links matters), then the late events."""
    for start in range(0, len(data.sent), 400):
        answer = api.post("/v1/events", {"events": data.sent[start:start + 400]})
        assert answer.status == 202, answer.body[:500]
    wait_persisted(pulse)
    for phase in sorted({c.phase for c in data.calls}):
        for call in (c for c in data.calls if c.phase == phase):
            answer = api.post(call.path, call.body)
            assert answer.status in (200, 202), (call.path, answer.body[:500])
        wait_persisted(pulse)
    answer = api.post("/v1/events", {"events": data.late})
    assert answer.status == 202, answer.body[:500]
    wait_persisted(pulse)


def segs(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{k}:{v}" for k, v in pairs]


SEGMENT_CASES = [[], [("country", "UA")], [("country", "DE"), ("event_type", "page_view")],
                 [("properties.plan", "pro")], [("properties.n", "2"), ("path", "/docs")]]


def test_dataset_has_what_the_cases_need(seeded: Seeded) -> None:
    events = seeded.data.events
    assert any(e.user_id == "" for e in events), "anonymous-only visitors"
    assert len(seeded.data.sent) > len(events), "duplicates are sent"
    overview = seeded.get("/v1/stats/overview", **seeded.range("UTC"))
    assert overview["events"] == len(seeded.select("UTC")), "duplicates are not counted"


def test_identity_links_make_persons_of_identifiers(seeded: Seeded) -> None:
    """The dataset's links matter: persons are fewer than identifiers, the
    chain joined three identifiers, the unforced merge of two identified
    members was refused and the forced one applied; the API counts persons."""
    events = seeded.select("UTC")
    assert len({e.person for e in events}) < len({e.actor for e in events})
    assert oracle.person_of(seeded.data, "chain-a") == {"chain-a", "chain-b", "chain-c"}
    assert oracle.person_of(seeded.data, "member-1") == {"member-1", "visitor-1"}
    assert oracle.person_of(seeded.data, "member-4") == {"member-3", "visitor-3", "member-4", "visitor-4"}
    overview = seeded.get("/v1/stats/overview", **seeded.range("UTC"))
    assert overview["unique_users"] == len({e.person for e in events})


@pytest.mark.parametrize("tz", TZS)
@pytest.mark.parametrize("group_by", ["hour", "day", "week", "month", "event_type", "properties.plan",
                                      "properties.n"])
def test_events_grouped(seeded: Seeded, group_by: str, tz: str) -> None:
    got = seeded.get("/v1/stats/events", group_by=group_by, **seeded.range(tz))
    assert got == oracle.events_by(seeded.select(tz), group_by, tz)


@pytest.mark.parametrize("segments", SEGMENT_CASES)
def test_events_with_segments_and_event_type(seeded: Seeded, segments: list[tuple[str, str]]) -> None:
    got = seeded.get("/v1/stats/events", group_by="day", segment=segs(segments), event_type="page_view",
                     **seeded.range("Europe/Kyiv"))
    assert got == oracle.events_by(seeded.select("Europe/Kyiv", segments, "page_view"), "day", "Europe/Kyiv")


def test_midnight_in_kyiv_is_not_midnight_in_utc(seeded: Seeded) -> None:
    day = (seeded.data.now - timedelta(days=10)).date()
    around = {"from": (day - timedelta(days=1)).isoformat(), "to": day.isoformat(), "segment": "event_type:click"}
    utc = {r["date"]: r["unique_users"] for r in seeded.get("/v1/stats/dau", tz="UTC", **around)}
    kyiv = {r["date"]: r["unique_users"] for r in seeded.get("/v1/stats/dau", tz="Europe/Kyiv", **around)}
    assert utc != kyiv
    for tz, got in (("UTC", utc), ("Europe/Kyiv", kyiv)):
        events = oracle.select(seeded.data, day - timedelta(days=1), day, tz, [("event_type", "click")])
        assert got == {r["bucket"]: r["unique_users"] for r in oracle.active(events, "day", tz)}


@pytest.mark.parametrize("tz", TZS)
@pytest.mark.parametrize("segments", SEGMENT_CASES[:3])
def test_dau(seeded: Seeded, tz: str, segments: list[tuple[str, str]]) -> None:
    got = seeded.get("/v1/stats/dau", segment=segs(segments), **seeded.range(tz))
    want = oracle.active(seeded.select(tz, segments), "day", tz)
    assert got == [{"date": r["bucket"], "unique_users": r["unique_users"]} for r in want]


@pytest.mark.parametrize("tz", TZS)
@pytest.mark.parametrize("interval", ["day", "week", "month"])
def test_active_users(seeded: Seeded, interval: str, tz: str) -> None:
    got = seeded.get("/v1/stats/active-users", interval=interval, **seeded.range(tz))
    assert got == oracle.active(seeded.select(tz), interval, tz)


@pytest.mark.parametrize("limit", [None, 1, 3, 1000])
@pytest.mark.parametrize("segments", SEGMENT_CASES[:2])
def test_top_events(seeded: Seeded, limit: int | None, segments: list[tuple[str, str]]) -> None:
    params: dict[str, Any] = {"segment": segs(segments), **seeded.range("UTC")}
    if limit is not None:
        params["limit"] = str(limit)
    got = seeded.get("/v1/stats/top-events", **params)
    assert got == oracle.top_events(seeded.select("UTC", segments), limit or 10)


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("segments", SEGMENT_CASES[:2])
def test_pages(seeded: Seeded, limit: int | None, segments: list[tuple[str, str]]) -> None:
    params: dict[str, Any] = {"segment": segs(segments), **seeded.range("UTC")}
    if limit is not None:
        params["limit"] = str(limit)
    assert seeded.get("/v1/stats/pages", **params) == oracle.pages(seeded.select("UTC", segments), limit or 10)


@pytest.mark.parametrize("segments", SEGMENT_CASES)
def test_overview(seeded: Seeded, segments: list[tuple[str, str]]) -> None:
    got = seeded.get("/v1/stats/overview", segment=segs(segments), **seeded.range("Europe/Kyiv"))
    assert got == oracle.overview(seeded.select("Europe/Kyiv", segments, include_bots=True))


def test_bots_are_left_out_unless_asked_for(seeded: Seeded) -> None:
    everything = seeded.select("UTC", include_bots=True)
    bots = [e for e in everything if e.bot]
    assert {e.actor for e in bots} >= {"crawler-1", "u0"}, "a crawler, and some headless events of a person"
    overview = seeded.get("/v1/stats/overview", **seeded.range("UTC"))
    assert overview["bot_events_excluded"] == len(bots) > 0
    assert seeded.get("/v1/stats/overview", include_bots="true", **seeded.range("UTC")) == \
        oracle.overview(everything, include_bots=True)
    for path, want in (("/v1/stats/top-events", oracle.top_events(everything, 10)),
                       ("/v1/stats/pages", oracle.pages(everything, 10)),
                       ("/v1/stats/active-users", oracle.active(everything, "day", "UTC"))):
        assert seeded.get(path, include_bots="true", **seeded.range("UTC")) == want, path
    assert seeded.get("/v1/stats/top-events", **seeded.range("UTC")) == oracle.top_events(seeded.select("UTC"), 10)
    answer = seeded.api.get("/v1/stats/dau?include_bots=maybe")
    assert answer.status == 400 and answer.json["errors"][0]["field"] == "include_bots"


def test_user_profiles(seeded: Seeded) -> None:
    for actor in ("u0", "u3", "anon-2", "f4", "visitor-1", "member-1", "chain-a", "chain-c", "member-4"):
        assert seeded.get(f"/v1/stats/users/{actor}") == oracle.user(seeded.data, actor)
    missing = seeded.api.get("/v1/stats/users/nobody-here")
    assert missing.status == 404
    assert missing.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("tz", TZS)
@pytest.mark.parametrize("segments", SEGMENT_CASES[:2])
def test_retention_with_weeks_not_yet_reached(seeded: Seeded, tz: str, segments: list[tuple[str, str]]) -> None:
    today = datetime.now(ZoneInfo(tz)).date()
    start = today - timedelta(weeks=9, days=3)
    got = seeded.get("/v1/stats/retention", start_date=start.isoformat(), windows="12", tz=tz,
                     segment=segs(segments))
    want = oracle.retention(seeded.data, start, 12, tz, today, segments)
    assert got == want
    weeks_so_far = (today - (start - timedelta(days=start.weekday()))).days // 7 + 1  # 10, or 11 on a Monday
    assert len(got) == weeks_so_far and "week_1" not in got[-1], "weeks that start after today are omitted"
    assert sum(r["week_0"] for r in got) > 0


FUNNEL_CASES: list[tuple[list[Any], int, list[str]]] = [
    (["signup", "activate", "purchase"], 3600, []),
    (["signup", "activate", "purchase"], 3599, []),
    (["signup", "purchase"], 3600, []),
    (["activate", "signup"], 86_400, []),
    (["signup", "activate", {"event_type": "purchase", "segment": ["properties.plan:pro"]}], 7200, []),
    (["page_view", "click", "signup"], 7 * 86_400, ["country:UA"]),
]


@pytest.mark.parametrize(("steps", "window", "segment"), FUNNEL_CASES)
def test_funnel(seeded: Seeded, steps: list[Any], window: int, segment: list[str]) -> None:
    body = {"steps": steps, "window_seconds": window, "segment": segment, **seeded.range("UTC")}
    answer = seeded.api.post("/v1/stats/funnel", body)
    assert answer.status == 200, answer.body
    spec = [(s, []) if isinstance(s, str) else (s["event_type"], [tuple(x.split(":", 1)) for x in s["segment"]])
            for s in steps]
    seg_pairs = [tuple(x.split(":", 1)) for x in segment]
    assert answer.json == oracle.funnel(seeded.select("UTC", seg_pairs), spec, window)


def test_funnel_cases_are_discriminating(seeded: Seeded) -> None:
    events = seeded.select("UTC")
    spec = [("signup", []), ("activate", []), ("purchase", [])]
    inclusive = oracle.funnel(events, spec, 3600)["steps"][2]["users"]
    assert oracle.funnel(events, spec, 3599)["steps"][2]["users"] < inclusive


def test_funnel_from_to_excludes_events_outside(seeded: Seeded) -> None:
    funnel_day = (seeded.data.now - timedelta(days=5)).date()
    body = {"steps": ["signup", "activate"], "window_seconds": 86_400,
            "from": (funnel_day + timedelta(days=1)).isoformat(), "to": seeded.last.isoformat()}
    answer = seeded.api.post("/v1/stats/funnel", body)
    events = oracle.select(seeded.data, funnel_day + timedelta(days=1), seeded.last, "UTC")
    assert answer.json == oracle.funnel(events, [("signup", []), ("activate", [])], 86_400)


def _stable_summary(seeded: Seeded, fetch: Any, tz: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        before = oracle.summary(seeded.data, datetime.now(UTC), tz)
        got = fetch()
        after = oracle.summary(seeded.data, datetime.now(UTC), tz)
        if before == after or time.monotonic() > deadline:
            assert got in (after, before)
            return


@pytest.mark.parametrize("tz", TZS)
def test_summary(seeded: Seeded, tz: str) -> None:
    _stable_summary(seeded, lambda: seeded.get("/v1/stats/summary", tz=tz), tz)


def test_live_sends_summary_events(seeded: Seeded) -> None:
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))

    def first_event() -> Any:
        response = http.request("GET", seeded.api.base_url + "/v1/stats/live",
                                headers={"X-API-Key": seeded.api.api_key or ""}, preload_content=False)
        try:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            buffer = b""
            while b"\n\n" not in buffer:
                chunk = response.read1(4096) if hasattr(response, "read1") else response.read(1)
                assert chunk, "stream ended before an event"
                buffer += chunk
        finally:
            response.release_conn()
            response.close()
        block = buffer.split(b"\n\n", 1)[0].decode()
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        assert lines["event"] == "summary"
        return orjson.loads(lines["data"])

    _stable_summary(seeded, first_event, "UTC")


def test_a_project_sees_only_its_own_data(seeded: Seeded, project: Any) -> None:
    other = project.api.get("/v1/stats/overview?" + urlencode(seeded.range("UTC")))
    assert other.json == {"events": 0, "unique_users": 0, "unique_event_types": 0, "unique_sessions": 0,
                          "bot_events_excluded": 0}
    forbidden = project.api.get(f"/v1/stats/overview?project_id={seeded.project_id}")
    assert forbidden.status == 403


def test_dates_are_plain_dates(seeded: Seeded) -> None:
    for row in seeded.get("/v1/stats/dau", **seeded.range("UTC")):
        date.fromisoformat(row["date"])
        assert isinstance(row["unique_users"], int)


ROLLUP_CASES = [("UTC", []), ("Europe/Kyiv", [("country", "UA")]), ("America/New_York", [("event_type", "click")])]


@pytest.mark.parametrize(("tz", "segments"), ROLLUP_CASES)
def test_rollups_answer_as_the_events_table(pulse: Any, seeded: Seeded, tz: str,
                                            segments: list[tuple[str, str]]) -> None:
    from pulse.core import retention, rollups, stats
    from pulse.core.filters import parse_filters

    ch = pulse.services.ch
    filters = parse_filters({**{k: [v] for k, v in seeded.range(tz).items()}, "segment": segs(segments)},
                            seeded.project_id, 731)
    assert rollups.actor_source(filters, by_type=True) is rollups.ACTOR_TYPE_HOURS
    plain = rollups.ACTOR_TYPE_HOURS if segments and segments[0][0] == "event_type" else rollups.ACTOR_HOURS
    assert rollups.actor_source(filters) is plain
    for group_by in ("hour", "day", "week", "month", "event_type"):
        assert stats.events(ch, filters, group_by) == stats.events(ch, filters, group_by, rollups=False)
    for interval in ("day", "week", "month"):
        assert stats.active_users(ch, filters, interval) == stats.active_users(ch, filters, interval, rollups=False)
    assert stats.top_events(ch, filters, 10) == stats.top_events(ch, filters, 10, rollups=False)
    assert stats.pages(ch, filters, 10) == stats.pages(ch, filters, 10, rollups=False)
    spec = retention.Retention(retention.monday(seeded.first), 12)
    assert retention.retention(ch, filters, spec) == retention.retention(ch, filters, spec, rollups=False)


SPAN_RANGES = [(0, 0), (0, 30), (30, 0), (40, 15), (79, 0)]  # (days after first, days before last)


@pytest.mark.parametrize(("after_first", "before_last"), SPAN_RANGES)
@pytest.mark.parametrize("segments", [[], [("event_type", "page_view")], [("path", "/docs")]])
@pytest.mark.parametrize("parts", [1, 3])
def test_spans_answer_exactly_where_they_hold(pulse: Any, seeded: Seeded, after_first: int, before_last: int,
                                              segments: list[tuple[str, str]], parts: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """type_spans/page_spans answer ranges that take in the project's first event or
    run past its last; elsewhere the hourly rollups do. Either way: the oracle's answer,
    whether the span tables are read merged (FINAL) or part by part."""
    from pulse.core import rollups, stats
    from pulse.core.filters import parse_filters

    monkeypatch.setattr(stats, "span_read", lambda table, _parts, who: rollups.span_read(table, parts, who))

    first, last = seeded.first + timedelta(days=after_first), seeded.last - timedelta(days=before_last)
    params = {"from": first.isoformat(), "to": last.isoformat(), "tz": "Europe/Kyiv"}
    filters = parse_filters({**{k: [v] for k, v in params.items()}, "segment": segs(segments)},
                            seeded.project_id, 731)
    times = [e.at for e in seeded.data.events]
    takes_all_before = filters.start <= min(times)
    takes_all_after = filters.end > max(times)
    assert (stats.spans_answer(pulse.services.ch, filters, frozenset({"event_type", "path"})) is not None) \
        == (takes_all_before or takes_all_after)
    selected = oracle.select(seeded.data, first, last, "Europe/Kyiv", segments)
    got = seeded.get("/v1/stats/top-events", segment=segs(segments), limit="1000", **params)
    assert got == oracle.top_events(selected, 1000)
    got = seeded.get("/v1/stats/pages", segment=segs(segments), limit="1000", **params)
    assert got == oracle.pages(selected, 1000)
    assert got["total_views"] > 0 or after_first == 79


def test_ranges_past_every_event_are_settled_from_part_metadata(pulse: Any, seeded: Seeded, project: Project,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A range past the last event of every project needs only the parts' min/max
    of ``hour`` to know the spans hold; any other range asks the project's own
    hours. Both answer as the oracle does. (Another project's event in 1970's
    first hour, the earliest Pulse accepts, is a real bound, not an unknown one.)"""
    from pulse.core import stats

    epoch = make_event(occurred_at="1970-01-01T00:00:00Z")
    assert project.api.post("/v1/events", epoch).status == 202
    wait_persisted(pulse)

    asked: list[str] = []
    real_query = stats.query

    def recording(endpoint: str, *args: Any) -> Any:
        asked.append(endpoint)
        return real_query(endpoint, *args)

    monkeypatch.setattr(stats, "query", recording)
    beyond = seeded.last + timedelta(days=1)
    # (the counts per type are asked beside the span tables' state, so the second range, which the
    # spans do not settle, asks them and then the events table: "top-events" twice)
    for first, last, expected in ((seeded.first, beyond, ["span-state", "top-events", "top-events-persons"]),
                                  (seeded.first + timedelta(days=40), seeded.last - timedelta(days=15),
                                   ["span-bounds", "span-state", "top-events", "top-events"])):
        asked.clear()
        params = {"from": first.isoformat(), "to": last.isoformat(), "tz": "Europe/Kyiv"}
        got = seeded.get("/v1/stats/top-events", limit="1000", **params)
        assert got == oracle.top_events(oracle.select(seeded.data, first, last, "Europe/Kyiv", []), 1000)
        assert sorted(a for a in asked if a.startswith(("span-", "top-events"))) == expected, (params, asked, pulse.services.ch.rows("SELECT table, partition, min_time, max_time FROM system.parts WHERE active AND table = 'type_hours'"))


def test_half_hour_zones_and_minutes_read_the_events_table(seeded: Seeded) -> None:
    from pulse.core import rollups
    from pulse.core.filters import parse_filters

    kolkata = parse_filters({k: [v] for k, v in seeded.range("Asia/Kolkata").items()}, seeded.project_id, 731)
    assert rollups.actor_source(kolkata) is rollups.EVENTS
    minutes = parse_filters({"from": ["2026-11-01T10:15:00Z"], "to": ["2026-11-02T00:00:00Z"]},
                            seeded.project_id, 731)
    assert rollups.actor_source(minutes) is rollups.EVENTS
    by_path = parse_filters({"segment": ["path:/docs"]}, seeded.project_id, 731)
    assert rollups.actor_source(by_path) is rollups.EVENTS
    assert rollups.page_source(by_path) is rollups.PAGE_HOURS
    got = seeded.get("/v1/stats/events", group_by="day", **seeded.range("Asia/Kolkata"))
    assert got == oracle.events_by(seeded.select("Asia/Kolkata"), "day", "Asia/Kolkata")
