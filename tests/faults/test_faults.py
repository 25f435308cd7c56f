"""Faults injected into a running Pulse under steady load; after each, every
acknowledged event is stored exactly once and the service took new work
again by itself. See conftest.py for the stack and the accounting."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pulse.bus.cloudevents import CloudEvent, to_kafka_headers
from pulse.core.events import parse_batch
from pulse.core.ingestion import encode_batch
from pulse.local import dlq
from pulse.settings import Limits
from tests.conftest import make_event
from tests.faults.conftest import DLQ, RAW, FaultStack, Load, check_exactly_once, http, wait_until

pytestmark = pytest.mark.faults


def unfinished_batches(stack: FaultStack, project_id: str) -> int:
    return int(stack.services.db.run(
        "SELECT count(*) FROM persist_batches WHERE project_id = CAST(:p AS uuid) AND status <> 'done'",
        p=project_id)[0][0])


def produce(stack: FaultStack, event: CloudEvent, key: str) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.broker.bootstrap, acks="all")
    try:
        producer.send(RAW, key=key.encode(), value=event.data, headers=to_kafka_headers(event)).get(30)
    finally:
        producer.close(5)


def normalized(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    return parse_batch(orjson.dumps({"events": events}), Limits()).rows


def test_broker_paused_and_resumed(stack: FaultStack) -> None:
    project_id, key = stack.project()
    load = Load(stack.ingest_url, key).start()
    try:
        wait_until(load.acked_more(0), 30, "a steady load")
        failures = load.failures
        stack.broker.pause()
        try:
            wait_until(lambda: load.failures >= failures + 2, 30, "ingest to answer 503 while the broker is paused")
        finally:
            stack.broker.resume()
        wait_until(load.acked_more(load.acks), 60, "ingest to accept again after the broker resumed")
    finally:
        load.stop()
    row = check_exactly_once(stack, "broker paused (SIGSTOP) and resumed", project_id, load)
    assert row["client retries"] >= 2


def test_persist_killed_mid_batch_and_restarted(stack: FaultStack) -> None:
    project_id, key = stack.project()
    faults = stack.persist.faults
    load = Load(stack.ingest_url, key).start()
    try:
        wait_until(load.acked_more(0), 30, "a steady load")
        (faults / "hang-after-ledger").touch()
        wait_until((faults / "hung").exists, 30, "persist to be mid-batch")
        stack.persist.kill()  # SIGKILL: ledger committed, ClickHouse insert not done
        (faults / "hang-after-ledger").unlink()
        (faults / "hung").unlink()
        stack.persist.start()  # same port, same Postgres, same chDB path, same broker
        wait_until(load.acked_more(load.acks), 60, "new events after the restart")
    finally:
        load.stop()
    check_exactly_once(stack, "persist SIGKILLed mid-batch, restarted", project_id, load)
    assert unfinished_batches(stack, project_id) == 0


def test_clickhouse_insert_failing_for_a_while(stack: FaultStack) -> None:
    project_id, key = stack.project()
    faults = stack.persist.faults
    failed_before = stack.persist.requests("500")
    load = Load(stack.ingest_url, key).start()
    try:
        wait_until(load.acked_more(0), 30, "a steady load")
        (faults / "clickhouse-down").touch()
        try:
            wait_until(lambda: stack.persist.requests("500") >= failed_before + 3, 30, "inserts to fail")
        finally:
            (faults / "clickhouse-down").unlink()
        wait_until(load.acked_more(load.acks), 60, "more events after ClickHouse came back")
    finally:
        load.stop()
    check_exactly_once(stack, "ClickHouse insert failing, then back", project_id, load)
    assert unfinished_batches(stack, project_id) == 0


def test_postgres_restarted(stack: FaultStack) -> None:
    project_id, key = stack.project()
    load = Load(stack.ingest_url, key).start()
    try:
        wait_until(load.acked_more(0), 30, "a steady load")
        refused = stack.persist.requests("503")
        stack.restart_postgres(while_down=lambda: wait_until(
            lambda: stack.persist.requests("503") > refused, 30, "persist to feel Postgres gone"))
        wait_until(load.acked_more(load.acks), 60, "new events after Postgres came back")
    finally:
        load.stop()
    check_exactly_once(stack, "Postgres stopped and started again", project_id, load)
    assert unfinished_batches(stack, project_id) == 0


def test_duplicate_deliveries(stack: FaultStack) -> None:
    project_id, key = stack.project()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    resent = [make_event() for _ in range(10)]
    for _ in range(2):  # a client that lost the first answer sends the same events again
        answer = http.request("POST", stack.ingest_url + "/v1/events", body=orjson.dumps({"events": resent}),
                              headers=headers)
        assert answer.status == 202
    record_twice = [make_event() for _ in range(10)]
    batch = encode_batch(project_id, normalized(record_twice))
    produce(stack, batch, project_id)  # the same record twice in the log
    produce(stack, batch, project_id)
    together = [make_event() for _ in range(10)]
    overlapping = encode_batch(project_id, normalized(together))
    assert stack.dispatcher.drain(60)
    for _ in range(2):  # redelivered after the first delivery finished
        answer = http.request("POST", stack.persist.url + "/_ce/ingested", body=overlapping.data,
                              headers=stack.deliver_headers(overlapping))
        assert answer.status == 200, answer.data
    ids = {e["event_id"] for e in resent + record_twice + together}
    check_exactly_once(stack, "duplicate deliveries (client, log, redelivery)", project_id,
                       extra_sent=ids, extra_acked=ids)


@pytest.mark.parametrize("round_", range(4))
def test_concurrent_deliveries_of_one_batch(stack: FaultStack, round_: int) -> None:
    """Two deliveries of one record at the same moment (a timed-out delivery retried while
    the first is still being handled, possibly by another replica)."""
    project_id, _ = stack.project()
    events = [make_event() for _ in range(200)]
    batch = encode_batch(project_id, normalized(events))
    start = threading.Barrier(3)
    statuses: list[int] = []

    def deliver() -> None:
        start.wait()
        statuses.append(http.request("POST", stack.persist.url + "/_ce/ingested", body=batch.data,
                                     headers=stack.deliver_headers(batch)).status)

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200, 200, 200]
    ids = {e["event_id"] for e in events}
    check_exactly_once(stack, "three deliveries of one batch at once", project_id,
                       extra_sent=ids, extra_acked=ids)


def test_poison_record_is_dead_lettered_and_the_rest_flows(stack: FaultStack) -> None:
    project_id, key = stack.project()
    poison = CloudEvent.new("dev.pulse.events.ingested", "/faults", orjson.dumps(
        {"project_id": project_id, "received_at": "2026-01-01T00:00:00.000Z", "events": "not a list"}),
        partitionkey=project_id)
    load = Load(stack.ingest_url, key).start()
    try:
        wait_until(load.acked_more(0), 30, "a steady load")
        produce(stack, poison, project_id)
        wait_until(load.acked_more(load.acks), 60, "events behind the poison record")
    finally:
        load.stop()
    check_exactly_once(stack, "poison record (valid CloudEvent, bad data)", project_id, load)
    letters = [d for d in dlq.read(stack.broker.bootstrap, DLQ) if d.id == poison.id]
    assert len(letters) == 1
    assert letters[0].attribute("knativeerrorcode") == "400"
    assert "data.events" in letters[0].error
