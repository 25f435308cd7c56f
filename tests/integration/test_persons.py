"""Persons through the public API: profiles, lists, person segments, what is
held about a person, deletion on request (nothing of them left anywhere,
everyone else's figures unchanged), suppression, and retention per project.
Expected answers come from the plain-Python oracle."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from tests.conftest import Api, make_event, wait_persisted
from tests.integration import stats_oracle as oracle
from tests.integration.test_stats import send_dataset


class Owned:
    def __init__(self, pulse: Any, account: Any, data: oracle.Dataset) -> None:
        self.pulse = pulse
        self.project_id = account.project_id
        self.api = Api(pulse.gateway_url, account.api_key)
        self.owner = {"Authorization": f"Bearer {account.access_token}"}
        self.data = data
        self.first = (data.now - timedelta(days=80)).date()
        self.last = data.now.date()

    def range(self) -> dict[str, str]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat(), "tz": "UTC"}

    def get(self, path: str, **params: Any) -> Any:
        pairs = [(k, x) for k, v in params.items() for x in (v if isinstance(v, list) else [v])]
        answer = self.api.get(path + ("?" + urlencode(pairs) if pairs else ""))
        assert answer.status == 200, (path, answer.status, answer.body[:300])
        return answer.json


def owned_project(pulse: Any, name: str) -> Any:
    from pulse.local.demo import create_demo_account

    return create_demo_account(pulse.gateway_url, name)


@pytest.fixture(scope="module")
def owned(pulse: Any) -> Owned:
    account = owned_project(pulse, f"persons-{uuid.uuid4().hex[:6]}")
    data = oracle.build(datetime.now(UTC), seed=99)
    project = Owned(pulse, account, data)
    send_dataset(pulse, project.api, data)
    return project


def events_of(data: oracle.Dataset, identifier: str) -> list[oracle.Event]:
    ids = oracle.person_of(data, identifier)
    return [e for e in data.events if e.actor in ids]


def z(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Profiles and lists -------------------------------------------------------------


def assert_hourly_rollups_match_events(ch: Any, p: dict[str, str]) -> None:
    """type_hours and path_hours hold, hour by hour, what the events table counts;
    session_spans each session's span, and its span in each country."""
    for table, column, measure, where in (("type_hours", "event_type", "events", ""),
                                          ("path_hours", "path", "views", " AND event_type = 'page_view'")):
        held = ch.rows(f"SELECT hour, {column}, sum({measure}) AS n FROM {table} WHERE project_id = {{p:UUID}}"
                       " GROUP BY ALL HAVING n != 0 ORDER BY ALL", p)
        counted = ch.rows(f"SELECT toStartOfHour(occurred_at) AS h, {column}, count() FROM events"
                          f" WHERE project_id = {{p:UUID}} AND bot = 0{where} GROUP BY ALL ORDER BY ALL", p)
        assert held == counted, table
    spans = ("SELECT session_id, {} FROM {} WHERE project_id = {{p:UUID}}{} GROUP BY session_id ORDER BY session_id")
    held = ch.rows(spans.format("min(first_at), max(last_at), minMap(country_first), maxMap(country_last)",
                                "session_spans", ""), p)
    counted = ch.rows(spans.format("min(occurred_at), max(occurred_at), minMap(map(country, occurred_at)),"
                                   " maxMap(map(country, occurred_at))", "events", " AND bot = 0 AND session_id != ''"), p)
    assert held == counted, "session_spans"

def test_a_person_is_every_linked_identifier(owned: Owned) -> None:
    got = owned.get("/v1/persons/visitor-4")
    mine = events_of(owned.data, "visitor-4")
    assert got["distinct_ids"] == sorted(oracle.person_of(owned.data, "visitor-4"))
    assert set(got["distinct_ids"]) == {"visitor-3", "member-3", "visitor-4", "member-4"}  # the forced merge
    assert got["person_id"] == str(uuid.uuid5(uuid.UUID(owned.project_id), "member-3"))
    assert owned.get("/v1/persons/member-3") == got, "any identifier names the person"
    assert got["first_seen"] == z(min(e.at for e in mine)) and got["last_seen"] == z(max(e.at for e in mine))
    assert got["properties"] == owned.data.traits[mine[0].person]


def test_a_refused_merge_leaves_two_persons(owned: Owned) -> None:
    one, two = owned.get("/v1/persons/member-1"), owned.get("/v1/persons/member-2")
    assert one["person_id"] != two["person_id"]
    assert set(one["distinct_ids"]) == {"member-1", "visitor-1"}
    with owned.pulse.services.db.connection() as conn:
        refused = conn.run("SELECT anonymous_id, user_id FROM person_refusals WHERE project_id = CAST(:p AS uuid)",
                           p=owned.project_id)
    assert refused == [["member-1", "member-2"]]


def test_an_identifier_never_linked_is_a_person_of_its_own(owned: Owned) -> None:
    got = owned.get("/v1/persons/u7")
    assert got["distinct_ids"] == ["u7"] and got["properties"] == {}
    missing = owned.api.get("/v1/persons/nobody-at-all")
    assert missing.status == 404 and missing.headers["Content-Type"] == "application/problem+json"


def test_persons_are_listed_by_last_seen_and_found_by_search(owned: Owned) -> None:
    listed = owned.get("/v1/persons", limit="5")
    last_seen: dict[str, datetime] = {}
    for e in owned.data.events:
        last_seen[e.person] = max(last_seen.get(e.person, e.at), e.at)
    newest = sorted(last_seen.values(), reverse=True)[:5]
    assert [row["last_seen"] for row in listed] == [z(t) for t in newest]
    found = owned.get("/v1/persons", search="CHAIN-B")
    assert [sorted(row["distinct_ids"]) for row in found] == [["chain-a", "chain-b", "chain-c"]]
    by_trait = owned.get("/v1/persons", search="tier-2")
    want = {p for p, props in owned.data.traits.items() if props.get("plan") == "tier-2"}
    assert len(by_trait) == len(want)


def test_person_segments_match_person_properties(owned: Owned) -> None:
    segment = [("person.plan", "tier-0")]
    got = owned.get("/v1/stats/overview", segment=[f"{k}:{v}" for k, v in segment], **owned.range())
    events = oracle.select(owned.data, owned.first, owned.last, "UTC", segment)
    assert got == oracle.overview(oracle.select(owned.data, owned.first, owned.last, "UTC", segment,
                                                include_bots=True))
    assert got["unique_users"] > 1
    dau = owned.get("/v1/stats/dau", segment=["person.plan:tier-0"], **owned.range())
    assert dau == [{"date": r["bucket"], "unique_users": r["unique_users"]}
                   for r in oracle.active(events, "day", "UTC")]


def test_everything_held_about_a_person_is_exported(owned: Owned) -> None:
    answer = owned.api.get("/v1/persons/chain-c/export")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in answer.body.splitlines()]
    assert lines[0]["person"]["distinct_ids"] == ["chain-a", "chain-b", "chain-c"]
    mine = events_of(owned.data, "chain-c")
    assert sorted(line["event_id"] for line in lines[1:]) == sorted(e.event_id for e in mine)
    assert owned.api.get("/v1/persons/nobody-at-all/export").status == 404


def test_native_identify_names_the_field_it_refuses(owned: Owned) -> None:
    for body, field in (({"anonymous_id": "a"}, "user_id"), ({"anonymous_id": "a", "user_id": "a"}, "anonymous_id"),
                        ({"anonymous_id": "a", "user_id": "b", "traits": []}, "traits"),
                        ({"anonymous_id": "a", "user_id": "b", "force": "yes"}, "force"),
                        ({"anonymous_id": "a", "user_id": "b", "colour": 1}, "colour")):
        answer = owned.api.post("/v1/identify", body)
        assert answer.status == 400, body
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json["errors"][0]["field"] == field


# Deletion -------------------------------------------------------------------------

CH_TABLES_BY_ACTOR = ("events", "actor_hours", "actor_type_hours", "page_hours", "type_spans", "page_spans")


def keys_of(ch: Any, ids: list[str]) -> list[int]:
    return [r[0] for r in ch.rows("SELECT reinterpretAsUInt128(sipHash128(arrayJoin({ids:Array(String)})))",
                                  {"ids": ids})]


def wait_deletion(project: Owned, deletion_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = project.api.get(f"/v1/deletions/{deletion_id}")
        assert status.status == 200, status.body
        if status.json["status"] in ("done", "failed") or time.monotonic() > deadline:
            return status.json
        time.sleep(0.2)


def test_a_deleted_person_leaves_nothing_and_everyone_else_counts_the_same(pulse: Any) -> None:
    account = owned_project(pulse, f"deletion-{uuid.uuid4().hex[:6]}")
    data = oracle.build(datetime.now(UTC), seed=7)
    project = Owned(pulse, account, data)
    send_dataset(pulse, project.api, data)
    ids = sorted(oracle.person_of(data, "visitor-2"))
    assert ids == ["member-2", "visitor-2"]
    gone = [e for e in data.events if e.actor in ids]
    assert any(e.event_type == "page_view" for e in gone)

    refused = project.api.request("DELETE", "/v1/persons/visitor-2")  # a read key is not an owner
    assert refused.status == 403
    answer = project.api.request("DELETE", f"/v1/persons/visitor-2?suppress=true&project_id={project.project_id}",
                                 headers=project.owner)
    assert answer.status == 202, answer.body
    deletion_id = answer.json["deletion_id"]
    job = wait_deletion(project, deletion_id)
    assert job["status"] == "done" and job["events_deleted"] == len(gone)

    ch, db = pulse.services.ch, pulse.services.db
    keys = keys_of(ch, ids)
    p = {"p": project.project_id, "ids": ids, "keys": keys}
    for table in CH_TABLES_BY_ACTOR:
        assert ch.rows(f"SELECT count() FROM {table} WHERE project_id = {{p:UUID}}"
                       " AND has({keys:Array(UInt128)}, actor_key)", p)[0][0] == 0, table
    assert ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID} AND (has({ids:Array(String)}, user_id)"
                   " OR has({ids:Array(String)}, anonymous_id))", p)[0][0] == 0
    assert ch.rows("SELECT count() FROM person_links WHERE project_id = {p:UUID}"
                   " AND (has({keys:Array(UInt128)}, actor_key) OR has({keys:Array(UInt128)}, person_key))", p)[0][0] == 0
    assert ch.rows("SELECT count() FROM person_properties WHERE project_id = {p:UUID}"
                   " AND has({keys:Array(UInt128)}, person_key)", p)[0][0] == 0
    assert_hourly_rollups_match_events(ch, p)
    with db.connection() as conn:
        for sql in ("SELECT count(*) FROM persons p JOIN person_ids i USING (project_id, person_id)"
                    " WHERE p.project_id = CAST(:p AS uuid) AND i.distinct_id = ANY(CAST(:ids AS text[]))",
                    "SELECT count(*) FROM person_refusals WHERE project_id = CAST(:p AS uuid)"
                    " AND (anonymous_id = ANY(CAST(:ids AS text[])) OR user_id = ANY(CAST(:ids AS text[])))",
                    "SELECT count(*) FROM person_deletion_events"):
            assert conn.run(sql, p=project.project_id, ids=ids)[0][0] == 0, sql
        ledger = conn.run("SELECT count(*) FROM event_ledger WHERE project_id = CAST(:p AS uuid)"
                          " AND event_id = ANY(CAST(:e AS uuid[]))", p=project.project_id,
                          e=[e.event_id for e in gone])[0][0]
        assert ledger == 0
        audit = conn.run("SELECT requested_by, identifiers, events_deleted, status FROM person_deletions"
                         " WHERE deletion_id = CAST(:d AS uuid)", d=deletion_id)[0]
        assert audit[0] and audit[1] is None and audit[2] == len(gone) and audit[3] == "done"

    # Everyone else's figures are those of the data without the person.
    data.events = [e for e in data.events if e.actor not in ids]
    rng = project.range()
    events = oracle.select(data, project.first, project.last, "UTC")
    assert project.get("/v1/stats/overview", **rng) == oracle.overview(
        oracle.select(data, project.first, project.last, "UTC", include_bots=True))
    assert project.get("/v1/stats/top-events", limit="20", **rng) == oracle.top_events(events, 20)
    assert project.get("/v1/stats/pages", **rng) == oracle.pages(events, 10)
    dau = project.get("/v1/stats/dau", **rng)
    assert dau == [{"date": r["bucket"], "unique_users": r["unique_users"]} for r in oracle.active(events, "day", "UTC")]
    steps = [("signup", []), ("activate", []), ("purchase", [])]
    funnel = project.api.post("/v1/stats/funnel", {"steps": [s for s, _ in steps], "window_seconds": 3600, **rng})
    assert funnel.json == oracle.funnel(events, steps, 3600)
    assert project.api.get("/v1/persons/visitor-2").status == 404

    # Suppressed: a later event with one of the identifiers is dropped at ingest.
    later = [make_event(user_id="member-2"), make_event(anonymous_id="visitor-2", user_id=None),
             make_event(user_id="someone-else")]
    assert project.api.post("/v1/events", {"events": later}).status == 202
    wait_persisted(pulse)
    assert ch.rows("SELECT groupArray(actor) FROM events WHERE project_id = {p:UUID}"
                   " AND occurred_at > now() - INTERVAL 1 MINUTE AND actor IN ('member-2', 'visitor-2', 'someone-else')",
                   p)[0][0] == ["someone-else"]


# Retention --------------------------------------------------------------------

def test_retention_removes_old_events_from_every_table(pulse: Any) -> None:
    account = owned_project(pulse, f"retention-{uuid.uuid4().hex[:6]}")
    project = Owned(pulse, account, oracle.build(datetime.now(UTC), seed=3))
    now = datetime.now(UTC)
    sent = []
    for days in (1, 10, 29, 31, 45, 60, 75):
        for n, kind in enumerate(("page_view", "signup", "page_view")):
            sent.append(make_event(event_type=kind, user_id=f"r-{n}", occurred_at=(now - timedelta(days=days)).isoformat(),
                                   context={"page": {"path": f"/p{days % 3}"}}))
    for days in (45, 1):  # a span from before the cut to after the range below: recomputed, it starts after it
        sent.append(make_event(user_id="late", occurred_at=(now - timedelta(days=days)).isoformat(),
                               context={"page": {"path": "/late"}}))
    assert project.api.post("/v1/events", {"events": sent}).status == 202
    wait_persisted(pulse)
    owner = project.owner
    for bad in (29, 2556, "30", True):
        answer = project.api.request("PATCH", f"/v1/projects/{project.project_id}", {"retention_days": bad}, headers=owner)
        assert answer.status == 400 and answer.json["errors"][0]["field"] == "retention_days"
    assert project.api.request("PATCH", f"/v1/projects/{project.project_id}", {"retention_days": 30}).status == 401
    answer = project.api.request("PATCH", f"/v1/projects/{project.project_id}", {"retention_days": 30}, headers=owner)
    assert answer.status == 200 and answer.json["retention_days"] == 30
    listed = project.api.get("/v1/projects", headers=owner).json
    assert [p["retention_days"] for p in listed if p["project_id"] == project.project_id] == [30]

    expired = pulse.functions["persist"].expire()
    assert expired >= 4 * 3 + 1
    ch = pulse.services.ch
    cut = (now - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
    p = {"p": project.project_id, "cut": cut.replace(tzinfo=None)}
    assert ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID} AND occurred_at < {cut:DateTime}", p)[0][0] == 0
    for table in ("actor_hours", "actor_type_hours", "page_hours", "type_hours", "path_hours"):
        assert ch.rows(f"SELECT count() FROM {table} WHERE project_id = {{p:UUID}} AND hour < {{cut:DateTime}}",
                       p)[0][0] == 0, table
    for table in ("type_spans", "page_spans"):
        assert ch.rows(f"SELECT count() FROM {table} WHERE project_id = {{p:UUID}} AND first_at < {{cut:DateTime}}",
                       p)[0][0] == 0, table
    kept = [e for e in sent if datetime.fromisoformat(e["occurred_at"]) >= cut]
    rng = {"from": (now - timedelta(days=100)).date().isoformat(), "to": now.date().isoformat()}
    overview = project.get("/v1/stats/overview", **rng)
    assert overview["events"] == len(kept) == 10
    top = project.get("/v1/stats/top-events", **rng)
    assert top == [{"event_type": "page_view", "count": 7, "users": 3}, {"event_type": "signup", "count": 3, "users": 1}]
    # From the project's first hour to before its last event: the span tables answer, with recomputed first times.
    mid = {"from": (now - timedelta(days=29)).date().isoformat(), "to": (now - timedelta(days=5)).date().isoformat()}
    assert project.get("/v1/stats/top-events", **mid) == [{"event_type": "page_view", "count": 4, "users": 2},
                                                          {"event_type": "signup", "count": 2, "users": 1}]
    assert pulse.functions["persist"].expire() == 0, "a second run finds nothing more"


# Identity crash notes ---------------------------------------------------------

def test_a_redelivered_batch_rewrites_overrides_a_crash_lost(pulse: Any, project: Any) -> None:
    """A crash after the identity transaction committed and before ClickHouse was
    written leaves Postgres linked and ClickHouse not; the redelivered batch does
    not apply its links twice but rewrites the ClickHouse side."""
    from pulse.core.persons import Identify, Link, SetProperties
    from pulse.storage.persons import PersonStore

    sent = [make_event(anonymous_id="crash-anon", user_id=None), make_event(user_id="crash-user")]
    assert project.api.post("/v1/events", {"events": sent}).status == 202
    wait_persisted(pulse)
    store = PersonStore(pulse.services.db, pulse.services.ch)
    batch_id = str(uuid.uuid4())
    ops = [Link("crash-anon", "crash-user"), Identify("crash-user"), SetProperties("crash-user", {"plan": "pro"}, {})]

    def users() -> int:
        return project.api.get("/v1/stats/overview").json["unique_users"]

    assert users() == 2
    assert store.apply(project.project_id, batch_id, ops) is not None
    assert users() == 1
    ch, p = pulse.services.ch, {"p": project.project_id}
    ch.command("ALTER TABLE person_links DELETE WHERE project_id = {p:UUID} SETTINGS mutations_sync = 2", p)
    ch.command("ALTER TABLE person_properties DELETE WHERE project_id = {p:UUID} SETTINGS mutations_sync = 2", p)
    assert users() == 2, "the state such a crash leaves"
    assert store.apply(project.project_id, batch_id, ops) is None, "not applied twice"
    assert users() == 1
    assert project.api.get("/v1/stats/overview?segment=person.plan:pro").json["unique_users"] == 1
    # The links can always be written again from Postgres (after migration 0022 created their table).
    from pulse.storage.persons import resync_links

    ch.command("ALTER TABLE person_links DELETE WHERE project_id = {p:UUID} SETTINGS mutations_sync = 2", p)
    assert users() == 2
    assert resync_links(pulse.services.db, ch) >= 1
    assert users() == 1


def test_a_deletion_while_others_keep_sending_leaves_every_count_exact(pulse: Any) -> None:
    """Deletion rebuilds the current hour's counts while other users' batches keep
    landing in that hour: persist waits for the job (the project's lock), so the
    rebuilt counts and the events table agree row for row afterwards."""
    import threading

    account = owned_project(pulse, f"busy-{uuid.uuid4().hex[:6]}")
    project = Owned(pulse, account, oracle.build(datetime.now(UTC), seed=5))
    mine = [make_event(user_id="leaving", event_type=kind) for kind in ("page_view", "signup", "page_view")]
    assert project.api.post("/v1/events", {"events": mine}).status == 202
    wait_persisted(pulse)
    stop = threading.Event()
    sent: list[int] = []

    def others() -> None:
        n = 0
        while not stop.is_set():
            batch = [make_event(user_id=f"staying-{i % 7}", event_type=("page_view", "click")[i % 2],
                                context={"page": {"path": "/busy"}}) for i in range(n, n + 20)]
            assert project.api.post("/v1/events", {"events": batch}).status == 202
            sent.append(len(batch))
            n += 20

    sender = threading.Thread(target=others)
    sender.start()
    try:
        answer = project.api.request("DELETE", f"/v1/persons/leaving?project_id={project.project_id}",
                                     headers=project.owner)
        assert answer.status == 202, answer.body
        job = wait_deletion(project, answer.json["deletion_id"])
    finally:
        stop.set()
        sender.join(30)
    wait_persisted(pulse)
    assert job["status"] == "done" and job["events_deleted"] == 3
    ch, p = pulse.services.ch, {"p": project.project_id}
    assert ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID} AND actor = 'leaving'", p)[0][0] == 0
    assert ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID}", p)[0][0] == sum(sent) > 0
    assert_hourly_rollups_match_events(ch, p)
    half = sum(sent) // 2  # every batch: 10 page views and 10 clicks, over the same 7 users
    assert project.get("/v1/stats/top-events") == [{"event_type": "click", "count": half, "users": 7},
                                                   {"event_type": "page_view", "count": half, "users": 7}]
