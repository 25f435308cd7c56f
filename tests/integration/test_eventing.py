"""The embedded dispatcher follows the chart's wiring: change a Trigger's filter
in the chart values and the embedded routing changes with it."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any

from werkzeug.wrappers import Request, Response

from pulse.bus.cloudevents import CloudEvent, from_http
from pulse.bus.kafka import ensure_topics
from pulse.local.dispatcher import Dispatcher
from pulse.local.eventing import subscriptions
from pulse.local.gateway import Server
from pulse.local.wiring import load_wiring


class Receiver:
    """Stands in for the functions: records every CloudEvent POSTed to it, by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = Server("receiver", self.app, "127.0.0.1", 0).start()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        event = from_http(request.headers, request.get_data())
        with self.lock:
            self.received.append((request.path, event.type))
        return Response(status=200)(environ, start_response)

    def paths_for(self, ce_type: str) -> list[str]:
        with self.lock:
            return [path for path, kind in self.received if kind == ce_type]


def route_events(pulse: Any, values: dict[str, Any] | None, types: list[str]) -> Receiver:
    """Run the chart's Triggers (as wired by ``values``) on a private topic, send
    one event of each type, and return what reached which subscriber path."""
    receiver = Receiver()
    topic = f"test.broker.{uuid.uuid4().hex[:8]}"
    bootstrap = pulse.settings.kafka_bootstrap
    ensure_topics(bootstrap, {topic: 1})
    run = uuid.uuid4().hex[:8]
    subs = [dataclasses.replace(s, topics=(topic,), group=f"{s.group}-{run}", reply_to=None,
                                initial_offset="earliest")
            for s in subscriptions(load_wiring(values), lambda d: receiver.server.url + d.path)
            if s.filter]
    dispatcher = Dispatcher(bootstrap, subs)
    try:
        for ce_type in types:
            pulse.services.producer.send(topic, "k", CloudEvent.new(ce_type, "/test", b"{}"))
        dispatcher.start()
        assert dispatcher.drain(90, topics=[topic])
    finally:
        dispatcher.stop()
        receiver.server.stop()
    return receiver


def test_trigger_filters_from_the_chart_route_the_embedded_broker(pulse: Any) -> None:
    types = ["dev.pulse.events.persisted", "dev.pulse.events.stored", "dev.pulse.export.requested"]
    default = route_events(pulse, None, types)
    assert default.paths_for("dev.pulse.events.persisted") == ["/_ce/persisted"]
    assert default.paths_for("dev.pulse.events.stored") == []
    assert default.paths_for("dev.pulse.export.requested") == ["/_ce/export-requested"]

    changed = route_events(
        pulse, {"eventing": {"triggers": {"persisted": {"filter": {"type": "dev.pulse.events.stored"}}}}}, types)
    assert changed.paths_for("dev.pulse.events.persisted") == []
    assert changed.paths_for("dev.pulse.events.stored") == ["/_ce/persisted"]
    assert changed.paths_for("dev.pulse.export.requested") == ["/_ce/export-requested"]


def test_records_that_are_not_cloudevents_are_wrapped_as_kafkasource_does(pulse: Any) -> None:
    receiver = Receiver()
    topic = f"test.raw.{uuid.uuid4().hex[:8]}"
    bootstrap = pulse.settings.kafka_bootstrap
    ensure_topics(bootstrap, {topic: 1})
    source = subscriptions(load_wiring(), lambda d: receiver.server.url + d.path)[0]
    sub = dataclasses.replace(source, topics=(topic,), group=f"test-{uuid.uuid4().hex[:8]}")
    producer = pulse.dispatcher.producer
    producer.send(topic, key=b"k1", value=b'{"plain": true}',
                  headers=[("content-type", b"application/json")]).get(10)
    dispatcher = Dispatcher(bootstrap, [sub])
    try:
        dispatcher.start()
        assert dispatcher.drain(90, topics=[topic])
    finally:
        dispatcher.stop()
        receiver.server.stop()
    assert receiver.received == [("/_ce/ingested", "dev.knative.kafka.event")]


def test_the_daily_ping_reaches_persist_through_the_broker_and_trims_the_ledger(pulse: Any) -> None:
    from pulse.bus.sink import publish
    from pulse.local.eventing import ping_event, sender

    db = pulse.services.db
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    project = str(uuid.uuid4())
    for event_id, age_days in ((old, pulse.settings.ledger_retention_days + 5), (recent, 1)):
        db.run("INSERT INTO event_ledger (project_id, event_id, batch_id, claimed_at) VALUES"
               " (CAST(:p AS uuid), CAST(:e AS uuid), CAST(:b AS uuid), now() - make_interval(days => :d))",
               p=project, e=event_id, b=str(uuid.uuid4()), d=age_days)
    (ping,) = pulse.wiring.pings
    publish(pulse.brokers[ping.sink.broker].url + "/", ping_event(ping.name, ping.ce_type, ping.data),
            token=pulse.issuer.source(ping.sink.audience, sender("PingSource", ping.name)))

    def remaining() -> set[str]:
        rows = db.run("SELECT event_id FROM event_ledger WHERE project_id = CAST(:p AS uuid)", p=project)
        return {str(r[0]) for r in rows}

    deadline = time.monotonic() + 30
    while remaining() != {recent} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remaining() == {recent}


def test_unordered_delivery_commits_only_past_records_already_handled(pulse: Any) -> None:
    """Unordered: records are delivered side by side, but a partition's committed
    offset never passes a record still in flight (a crash must redeliver it)."""
    from kafka import KafkaConsumer, TopicPartition

    release = threading.Event()
    received: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        event = from_http(Request(environ).headers, Request(environ).get_data())
        if event.get("subject") == "slow":
            release.wait(60)
        received.append(event.get("subject") or "")
        return Response(status=200)(environ, start_response)

    server = Server("slow-receiver", app, "127.0.0.1", 0).start()
    topic = f"test.unordered.{uuid.uuid4().hex[:8]}"
    bootstrap = pulse.settings.kafka_bootstrap
    ensure_topics(bootstrap, {topic: 1})
    source = subscriptions(load_wiring(), lambda d: server.url + d.path)[0]
    assert not source.ordered  # the chart's KafkaSource is unordered
    group = f"test-{uuid.uuid4().hex[:8]}"
    sub = dataclasses.replace(source, topics=(topic,), group=group)
    for subject in ["fast-0", "slow", "fast-2", "fast-3", "fast-4"]:
        pulse.services.producer.send(topic, "k", CloudEvent.new("t", "/test", b"{}", subject=subject))
    dispatcher = Dispatcher(bootstrap, [sub])
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    try:
        dispatcher.start()
        deadline = time.monotonic() + 60
        while sorted(received) != ["fast-0", "fast-2", "fast-3", "fast-4"]:
            assert time.monotonic() < deadline, received
            time.sleep(0.05)
        time.sleep(0.5)  # give the dispatcher the chance to commit what it should not
        assert (reader.committed(tp) or 0) == 1  # up to, not past, the slow record at offset 1
        release.set()
        assert dispatcher.drain(60, topics=[topic])
        assert reader.committed(tp) == 5
        assert sorted(received) == ["fast-0", "fast-2", "fast-3", "fast-4", "slow"]
    finally:
        release.set()
        reader.close(autocommit=False)
        dispatcher.stop()
        server.stop()
