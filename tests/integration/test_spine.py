"""The end-to-end path through real components: gateway → ingest → Kafka →
dispatcher → persist → Postgres ledger + ClickHouse → aggregate."""

from __future__ import annotations

import base64
import gzip
import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from pulse.bus.cloudevents import CloudEvent
from pulse.core.events import validate_events
from pulse.core.ingestion import encode_batch
from pulse.settings import Limits
from tests.conftest import Api, make_event, wait_persisted


def generated(count: int, seed: int, days: int = 10) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = []
    for _ in range(count):
        event = make_event(event_type=rng.choice(["page_view", "signup", "purchase", "click"]),
                           occurred_at=(now - timedelta(days=rng.random() * days)).isoformat())
        who = rng.randrange(60)
        if who % 5 == 0:
            event.pop("user_id")
            event["anonymous_id"] = f"anon-{who}"
        else:
            event["user_id"] = f"user-{who}"
        events.append(event)
    return events


def expected_top(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    users: dict[str, set[str]] = defaultdict(set)
    for e in events:
        counts[e["event_type"]] += 1
        users[e["event_type"]].add(e.get("user_id") or e["anonymous_id"])
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    return [{"event_type": t, "count": counts[t], "users": len(users[t])} for t in ordered]


def expected_dau(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    days: dict[str, set[str]] = defaultdict(set)
    for e in events:
        day = datetime.fromisoformat(e["occurred_at"]).astimezone(UTC).date().isoformat()
        days[day].add(e.get("user_id") or e["anonymous_id"])
    return [{"date": d, "unique_users": len(u)} for d, u in sorted(days.items())]


def stats(api: Api) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    top = api.get("/v1/stats/top-events?limit=100")
    dau = api.get("/v1/stats/dau")
    assert top.status == 200 and dau.status == 200, (top.body, dau.body)
    return top.json, dau.json


def test_batches_end_to_end_give_exact_top_events_and_dau(pulse: Any, project: Any) -> None:
    events = generated(2500, seed=1)
    duplicate_ids = events[:40]  # sent again in a later request: counted once
    for start in range(0, len(events), 1000):
        answer = project.api.post("/v1/events", {"events": events[start:start + 1000]})
        assert answer.status == 202, answer.body
        assert answer.json == {"accepted": len(events[start:start + 1000]), "errors": []}
    assert project.api.post("/v1/events", {"events": duplicate_ids}).status == 202
    assert project.api.post("/v1/events", events[-1]).json["accepted"] == 1
    wait_persisted(pulse)
    top, dau = stats(project.api)
    assert top == expected_top(events)
    assert dau == expected_dau(events)


def test_gzip_and_basic_auth_are_accepted(pulse: Any, project: Any) -> None:
    events = generated(30, seed=2)
    basic = "Basic " + base64.b64encode(f"{project.key}:".encode()).decode()
    answer = project.api.post("/v1/events", {"events": events}, gzip_body=True, key="",
                              headers={"Authorization": basic})
    assert answer.status == 202, answer.body
    wait_persisted(pulse)
    assert stats(project.api)[0] == expected_top(events)


def produce(pulse: Any, event: CloudEvent, project_id: str) -> None:
    pulse.services.producer.send(pulse.settings.raw_topic, project_id, event)


def test_the_same_record_delivered_twice_is_counted_once(pulse: Any, project: Any) -> None:
    rows = validate_events(generated(300, seed=3), Limits()).rows
    record = encode_batch(project.project_id, rows)
    produce(pulse, record, project.project_id)
    wait_persisted(pulse)
    first = stats(project.api)
    produce(pulse, record, project.project_id)  # a redelivery: same record, same CloudEvent id
    wait_persisted(pulse)
    assert stats(project.api) == first
    assert sum(row["count"] for row in first[0]) == 300


@pytest.mark.parametrize("step", ["after-ledger", "after-insert"])
def test_a_crash_between_steps_neither_loses_nor_doubles(pulse: Any, project: Any, step: str) -> None:
    persister = pulse.functions["persist"].persister
    failures = []

    def crash_once(reached: str) -> None:
        if reached == step and not failures:
            failures.append(reached)
            raise RuntimeError(f"injected crash {reached}")

    events = generated(500, seed=4)
    persister.fault = crash_once
    try:
        assert project.api.post("/v1/events", {"events": events}).status == 202
        wait_persisted(pulse)
    finally:
        persister.fault = lambda reached: None
    assert failures == [step]  # the first delivery failed there; the dispatcher retried
    top, dau = stats(project.api)
    assert top == expected_top(events)
    assert dau == expected_dau(events)


def test_broker_outage_gives_503_and_loses_nothing(pulse: Any, project: Any) -> None:
    events = generated(200, seed=5)
    batches = [events[i:i + 50] for i in range(0, 200, 50)]
    assert project.api.post("/v1/events", {"events": batches[0]}).status == 202
    pulse.stack.broker.pause()
    try:
        refused = project.api.post("/v1/events", {"events": batches[1]})
        assert refused.status == 503
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        pulse.stack.broker.resume()
    # the client retries what was refused, with the same event ids
    for batch in batches[1:]:
        assert project.api.post("/v1/events", {"events": batch}).status == 202
    wait_persisted(pulse)
    assert stats(project.api)[0] == expected_top(events)


def test_a_poison_record_goes_to_the_dead_letter_topic(pulse: Any, project: Any) -> None:
    poison = CloudEvent.new("dev.pulse.events.ingested", "/test", b'{"not": "a batch"}')
    produce(pulse, poison, project.project_id)
    fine = generated(20, seed=6)
    assert project.api.post("/v1/events", {"events": fine}).status == 202
    wait_persisted(pulse)
    assert stats(project.api)[0] == expected_top(fine)
    consumer = KafkaConsumer(bootstrap_servers=pulse.settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    partition = TopicPartition(pulse.settings.dlq_topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    ids = [dict(r.headers).get("ce_id", b"").decode() for r in consumer]
    consumer.close()
    assert poison.id in ids


BAD_INPUTS = [
    ("malformed JSON", b'{"events": [', "body", 400),
    ("missing fields", orjson.dumps({"properties": {}}), "event_type", 400),
    ("bad UUID", orjson.dumps(make_event(event_id="123")), "event_id", 400),
    ("far future", orjson.dumps(make_event(occurred_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())),
     "occurred_at", 400),
    ("1001 events", orjson.dumps({"events": [make_event() for _ in range(1001)]}), "events", 413),
    ("over 5 MB", orjson.dumps({"events": [make_event(properties={"x": "y" * 30000}) for _ in range(180)]}),
     None, 413),
]


@pytest.mark.parametrize("name,body,field,status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_problem_json_naming_the_field(project: Any, name: str, body: bytes, field: str | None,
                                                      status: int) -> None:
    answer = project.api.post("/v1/events", raw=body, headers={"Content-Type": "application/json"})
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"] == "application/problem+json"
    problem = answer.json
    assert {"type", "title", "status", "detail", "errors"} <= set(problem) and problem["status"] == status
    if field:
        assert field in [e["field"] for e in problem["errors"]]
    assert "Traceback" not in answer.body.decode()


def test_a_gzip_bomb_is_refused(project: Any) -> None:
    bomb = gzip.compress(b"[" + b" " * (20 * 1024 * 1024) + b"]")
    answer = project.api.post("/v1/events", raw=bomb, headers={"Content-Type": "application/json",
                                                              "Content-Encoding": "gzip"})
    assert answer.status == 413


def test_keys_are_checked_for_existence_and_scope(pulse: Any, project: Any) -> None:
    assert project.api.post("/v1/events", make_event(), key="").status == 401
    unknown = "pulse_abcdefgh_" + "x" * 32
    assert project.api.post("/v1/events", make_event(), key=unknown).status == 401
    read_only = pulse.services.keys.create(project.project_id, "reader", ["read"])[1]
    ingest_only = pulse.services.keys.create(project.project_id, "writer", ["ingest"])[1]
    refused = project.api.post("/v1/events", make_event(), key=read_only)
    assert refused.status == 403 and "ingest" in refused.json["detail"]
    assert project.api.get("/v1/stats/top-events", key=ingest_only).status == 403
    assert project.api.get("/v1/stats/top-events", key=read_only).status == 200


def test_another_projects_key_reads_nothing_of_this_one(pulse: Any, project: Any) -> None:
    from pulse.local.demo import create_demo_key

    assert project.api.post("/v1/events", {"events": generated(10, seed=7)}).status == 202
    wait_persisted(pulse)
    _, other_key = create_demo_key(pulse.services, "other")
    assert project.api.get("/v1/stats/top-events", key=other_key).json == []
    crossing = project.api.get(f"/v1/stats/top-events?project_id={project.project_id}", key=other_key)
    assert crossing.status == 403


def test_every_function_serves_health_readiness_metrics_and_request_ids(pulse: Any) -> None:
    for name, url in pulse.describe()["functions"].items():
        api = Api(url)
        health = api.get("/healthz", headers={"X-Request-ID": "req-123"})
        assert health.status == 200 and health.json["function"] == name
        assert health.headers["X-Request-ID"] == "req-123"
        ready = api.get("/readyz")
        assert ready.status == 200, ready.body
        assert all(v == "ok" for v in ready.json["checks"].values())
        metrics = api.get("/metrics")
        assert metrics.status == 200 and b"pulse_http_requests_total" in metrics.body
        assert uuid.UUID(api.get("/nowhere").headers["X-Request-ID"])


def test_persisted_events_reach_aggregate_through_the_broker_trigger(pulse: Any, project: Any) -> None:
    from prometheus_client import REGISTRY

    def delivered() -> float:
        return REGISTRY.get_sample_value("pulse_dispatch_deliveries_total",
                                         {"route": "pulse-persisted", "outcome": "delivered"}) or 0.0

    before = delivered()
    assert project.api.post("/v1/events", make_event()).status == 202
    wait_persisted(pulse)
    assert pulse.drain(30)
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while delivered() <= before and datetime.now(UTC) < deadline:
        pulse.drain(1)
    assert delivered() > before


def test_a_spool_left_by_a_hard_stop_is_persisted_once_at_start(pulse: Any, project: Any, tmp_path: Any) -> None:
    """What `pulse up` does before ingest takes requests (pulse.local.recovery):
    a batch already stored is not stored again, one that never reached persist
    is stored, a malformed record is dead-lettered, and the spool is emptied."""
    from pulse.bus.spool import Spool, segments
    from pulse.errors import InvalidInput
    from pulse.local.recovery import replay_spool

    stored = encode_batch(project.project_id, validate_events(generated(40, seed=7), Limits()).rows)
    produce(pulse, stored, project.project_id)
    wait_persisted(pulse)
    missed = encode_batch(project.project_id, validate_events(generated(60, seed=8), Limits()).rows)
    malformed = CloudEvent.new("dev.pulse.events.ingested", "/pulse/ingest", b'{"events": 7}',
                               partitionkey=project.project_id)
    box = Spool(tmp_path, "ingest-test")
    for record in (stored, missed, malformed):
        box.append(record)
    box.close()
    refused: list[tuple[str, InvalidInput]] = []
    replayed = replay_spool(tmp_path, pulse.functions["persist"],
                            lambda event, error, where: refused.append((event.id, error)))
    assert replayed == 2  # the stored batch was skipped as done
    assert [(event_id, error.status) for event_id, error in refused] == [(malformed.id, 400)]
    assert segments(tmp_path) == []
    top, _ = stats(project.api)
    assert sum(row["count"] for row in top) == 100
