"""The embedded stand-in for Knative Eventing's Kafka data plane.

One ``Subscription`` plays either a KafkaSource (topic → sink) or a Trigger of
a Kafka-class Broker (broker topic → subscriber, with an exact attribute
filter). The semantics follow Knative's:

- a consumer group per subscription; records of one partition are delivered
  in order (``ordered``), partitions run side by side;
- a record that is a binary-mode CloudEvent passes through unchanged; any
  other record is wrapped as KafkaSource does (type ``dev.knative.kafka.event``,
  id ``partition:<p>/offset:<o>``, subject ``partition:<p>#<o>``, key extension);
- 2xx is success; 5xx, 404, 408, 409, 429 and transport errors are retried
  with ``backoffPolicy``/``backoffDelay`` up to ``retry`` times; other 4xx are
  not retried; a record that did not get through goes to the dead-letter
  topic (with ``knativeerrorcode``/``knativeerrordest``/``knativeerrordata``,
  the last answer's first KiB base64-encoded, as Knative adds them, and
  ``pulsesourcetopic``/``pulsesourceoffset``) and is counted;
- offsets are committed only after a 2xx or a dead-letter send, so a crash
  or restart redelivers; a source's replies are dropped, a Trigger
  subscriber's CloudEvent reply goes back into its Broker.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import urllib3
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from opentelemetry.trace import SpanKind

from pulse import telemetry
from pulse.bus import kafka as kafka_bus
from pulse.bus import spool
from pulse.bus.cloudevents import (
    CloudEvent,
    from_http,
    from_kafka,
    to_http,
    to_kafka_headers,
)
from pulse.errors import InvalidInput

log = logging.getLogger("pulse.dispatcher")
RETRYABLE = frozenset({404, 408, 409, 429})
ERROR_DATA_BYTES = 1024
WINDOW = 32  # records in flight per unordered subscription (and delivery threads), unless it says otherwise
COMMIT_EVERY_S = 0.2  # an unordered subscription commits at most this often while records are in flight


@dataclass(frozen=True)
class DeliverySpec:
    retry: int = 5
    backoff_policy: str = "exponential"
    backoff_delay_s: float = 0.2
    timeout_s: float | None = 30.0
    dead_letter_topic: str | None = None

    def delay(self, attempt: int) -> float:
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * attempt
        return float(self.backoff_delay_s * (2 ** (attempt - 1)))


@dataclass(frozen=True)
class Subscription:
    name: str
    topics: tuple[str, ...]
    group: str
    target: str  # URL
    delivery: DeliverySpec = field(default_factory=DeliverySpec)
    initial_offset: str = "earliest"
    ordered: bool = True
    filter: tuple[tuple[str, str], ...] = ()
    reply_to: str | None = None  # a Trigger's Broker topic; None for a source
    source_uri: str = ""
    window: int = WINDOW
    # The sender's OIDC token for the target's audience (pulse.security.eventauth).
    token: Callable[[], str] | None = None

    def matches(self, event: CloudEvent) -> bool:
        return all(event.get(name) == value for name, value in self.filter)


def wrap_record(record: ConsumerRecord, source_uri: str) -> CloudEvent:
    """A non-CloudEvent record as KafkaSource presents it."""
    attrs = {
        "specversion": "1.0",
        "id": f"partition:{record.partition}/offset:{record.offset}",
        "source": source_uri,
        "type": "dev.knative.kafka.event",
        "subject": f"partition:{record.partition}#{record.offset}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.timestamp / 1000)),
    }
    if record.key is not None:
        attrs["key"] = record.key.decode("utf-8", "replace")
    for key, value in record.headers or []:
        if key.lower() == "content-type" and value:
            attrs["datacontenttype"] = value.decode("utf-8", "replace")
    return CloudEvent(MappingProxyType(attrs), record.value or b"")


def error_headers(code: int, destination: str, answer: bytes, source_topic: str,
                  source_position: str) -> list[tuple[str, bytes]]:
    """The attributes a dead letter carries: who refused it, with what, and where it came from."""
    return [("ce_knativeerrorcode", str(code).encode()),
            ("ce_knativeerrordest", destination.encode()),
            ("ce_knativeerrordata", base64.b64encode(answer[:ERROR_DATA_BYTES])),
            ("ce_pulsesourcetopic", source_topic.encode()),
            ("ce_pulsesourceoffset", source_position.encode())]


class Worker:
    """Consumes one subscription until stopped."""

    def __init__(self, subscription: Subscription, bootstrap: str, producer: KafkaProducer,
                 http: urllib3.PoolManager, spool_dir: Path | None = None) -> None:
        self.sub = subscription
        self.bootstrap = bootstrap
        self.producer = producer
        self.http = http
        self.spool_dir = spool_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dispatch-{subscription.name}", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=subscription.window,
                                        thread_name_prefix=f"deliver-{subscription.name}")
        self.consumer: KafkaConsumer | None = None
        self.assigned = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # Consuming ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.consumer = kafka_bus.consumer(self.bootstrap, self.sub.group, list(self.sub.topics),
                                                   self.sub.initial_offset)
                self._loop(self.consumer)
            except KafkaError as exc:
                log.warning("subscription %s: kafka error %s; reconnecting", self.sub.name, exc)
                time.sleep(1.0)
            except Exception:  # noqa: BLE001 - keep the dispatcher alive, log the bug
                log.exception("subscription %s failed; restarting it", self.sub.name)
                time.sleep(1.0)
            finally:
                if self.consumer is not None:
                    with suppress(Exception):
                        self.consumer.close(autocommit=False)
                    self.consumer = None

    def _loop(self, consumer: KafkaConsumer) -> None:
        if not self.sub.ordered:
            self._loop_unordered(consumer)
            return
        while not self._stop.is_set():
            polled = consumer.poll(timeout_ms=200)
            if consumer.assignment():
                self.assigned.set()
            if not polled:
                self._report_lag(consumer)
                continue
            batches = list(polled.items())  # partitions side by side, each in order
            futures = [self._pool.submit(self._deliver_partition, records) for _, records in batches]
            handled = [f.result() for f in futures]
            offsets = {tp: last + 1 for (tp, _), last in zip(batches, handled, strict=True) if last is not None}
            if offsets:
                consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
            for (tp, records), last in zip(batches, handled, strict=True):
                if last != records[-1].offset:  # stopped mid-way: fetch the rest again
                    consumer.seek(tp, records[0].offset if last is None else last + 1)
            self._report_lag(consumer)

    def _loop_unordered(self, consumer: KafkaConsumer) -> None:
        """Up to ``window`` records in flight at once, whatever their partition, a
        new one sent as soon as one is done (no waiting for the slowest of a
        poll); a partition's commit point is the offset up to which every
        record was handled, so a crash redelivers only what may be unhandled.
        Commits go out every ``COMMIT_EVERY_S`` while records are in flight
        (at once when none is), not one per record."""
        pending: dict[TopicPartition, deque[tuple[int, Future[int | None]]]] = {}
        lag_reported = 0.0
        window = self.sub.window
        uncommitted: dict[TopicPartition, int] = {}
        committed_at = 0.0
        while not self._stop.is_set():
            in_flight = sum(len(queue) for queue in pending.values())
            if in_flight < window:
                polled = consumer.poll(timeout_ms=20 if in_flight else 200, max_records=window - in_flight)
                if consumer.assignment():
                    self.assigned.set()
                for tp, records in polled.items():
                    queue = pending.setdefault(tp, deque())
                    queue.extend((r.offset, self._pool.submit(self._deliver_partition, [r])) for r in records)
            else:
                wait([queue[0][1] for queue in pending.values() if queue], timeout=0.2, return_when=FIRST_COMPLETED)
            for tp, queue in pending.items():
                while queue and queue[0][1].done():
                    offset, future = queue.popleft()
                    if future.result() is None:  # abandoned at stop: fetch it again next time
                        consumer.seek(tp, offset)
                        queue.clear()
                        break
                    uncommitted[tp] = offset + 1
            idle = not any(pending.values())
            if uncommitted and (idle or time.monotonic() - committed_at >= COMMIT_EVERY_S):
                consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in uncommitted.items()})
                uncommitted = {}
                committed_at = time.monotonic()
            if time.monotonic() - lag_reported > 1.0:
                self._report_lag(consumer)
                lag_reported = time.monotonic()

    def _deliver_partition(self, records: Sequence[ConsumerRecord]) -> int | None:
        """Deliver in order; the last offset handled (delivered or dead-lettered)."""
        last = None
        for record in records:
            if self._stop.is_set():
                break
            try:
                self._handle(record)
            except _Stopping:
                break
            last = record.offset
        return last

    def _handle(self, record: ConsumerRecord) -> None:
        event = from_kafka(record.headers or [], record.value, record.key)
        if event is None:
            event = wrap_record(record, self.sub.source_uri or f"/kafka/{record.topic}")
        if not self.sub.matches(event):
            telemetry.DISPATCH_DELIVERIES.labels(self.sub.name, "filtered").inc()
            return
        outcome, code, answer = self._deliver(event)
        telemetry.DISPATCH_DELIVERIES.labels(self.sub.name, outcome).inc()
        if outcome != "delivered":
            self._dead_letter(record, event, code, answer)

    def _deliver(self, event: CloudEvent) -> tuple[str, int, bytes]:
        with telemetry.span(f"{self.sub.name} deliver", event.get("traceparent"), SpanKind.CONSUMER, attributes={
                "messaging.system": "kafka", "messaging.message.id": event.id,
                "server.address": self.sub.target}) as current:
            outcome, code, answer = self._attempts(event)
            current.set_attribute("pulse.delivery.outcome", outcome)
            current.set_attribute("http.status_code", code)
            return outcome, code, answer

    def _attempts(self, event: CloudEvent) -> tuple[str, int, bytes]:
        """(outcome, last status, last response body) after the retries the spec allows."""
        spec = self.sub.delivery
        headers = to_http(event)
        traceparent = telemetry.current_traceparent() or event.get("traceparent")
        if traceparent:
            headers["traceparent"] = traceparent
        if self.sub.token is not None:
            headers["Authorization"] = f"Bearer {self.sub.token()}"
        code, answer = 0, b""
        for attempt in range(spec.retry + 1):
            if attempt and self._stop.wait(spec.delay(attempt)):
                break
            try:
                response = self.http.request(
                    "POST", self.sub.target, body=event.data, headers=headers, preload_content=True,
                    timeout=urllib3.Timeout(total=spec.timeout_s) if spec.timeout_s else None)
                code, answer = response.status, response.data or b""
            except urllib3.exceptions.HTTPError as exc:
                code, answer = 0, type(exc).__name__.encode()
                telemetry.DISPATCH_FAILED_ATTEMPTS.labels(self.sub.name, "0").inc()
                log.info("delivery of %s to %s failed: %s", event.id, self.sub.target, type(exc).__name__)
                continue
            if 200 <= code < 300:
                self._reply(response)
                return "delivered", code, b""
            telemetry.DISPATCH_FAILED_ATTEMPTS.labels(self.sub.name, str(code)).inc()
            if code < 500 and code not in RETRYABLE:
                return "rejected", code, answer
        return ("stopped" if self._stop.is_set() else "exhausted"), code, answer

    def _reply(self, response: urllib3.BaseHTTPResponse) -> None:
        if not self.sub.reply_to or not response.headers.get("ce-id"):
            return
        try:
            reply = from_http(dict(response.headers), response.data)
        except Exception:  # noqa: BLE001 - a malformed reply is dropped, as Knative does
            return
        self.producer.send(self.sub.reply_to, value=reply.data, headers=to_kafka_headers(reply)).get(10)

    def _dead_letter(self, record: ConsumerRecord, event: CloudEvent, code: int, answer: bytes) -> None:
        if self._stop.is_set():
            raise _Stopping()
        topic = self.sub.delivery.dead_letter_topic
        if not topic:
            log.error("subscription %s dropped %s after failed delivery (no dead-letter sink)",
                      self.sub.name, event.id)
            return
        headers = list(record.headers or []) if from_kafka(record.headers or [], record.value) else \
            to_kafka_headers(event)
        value = record.value
        if self.spool_dir is not None and event.get(spool.ATTRIBUTE):
            # A record carried by reference goes with its data, and its spool segment may go.
            with contextlib.suppress(InvalidInput):
                spooled = spool.resolve(self.spool_dir, event)
                if spooled is not None:
                    headers, value = to_kafka_headers(spooled), spooled.data
            spool.mark_dead(self.spool_dir, event.id)
        headers += error_headers(code, self.sub.target, answer, record.topic, f"{record.partition}:{record.offset}")
        self.producer.send(topic, key=record.key, value=value, headers=headers).get(30)
        telemetry.DEAD_LETTERS.labels(self.sub.name).inc()
        log.warning("subscription %s dead-lettered %s (status %s)", self.sub.name, event.id, code)

    # Lag --------------------------------------------------------------------

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        assignment = consumer.assignment()
        if not assignment:
            return
        ends = consumer.end_offsets(list(assignment))
        for tp in assignment:
            position = consumer.position(tp)
            telemetry.CONSUMER_LAG.labels(self.sub.group, tp.topic, str(tp.partition)).set(
                max(0, ends.get(tp, 0) - position))


class _Stopping(Exception):
    """Raised to abandon a record at shutdown without dead-lettering it."""


class Dispatcher:
    def __init__(self, bootstrap: str, subscriptions: Sequence[Subscription], spool_dir: Path | None = None) -> None:
        self.bootstrap = bootstrap
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                      max_request_size=kafka_bus.MAX_RECORD_BYTES, linger_ms=1)
        # A connection per delivery thread, so none is opened and dropped per record.
        self.http = urllib3.PoolManager(num_pools=16, maxsize=max((s.window for s in subscriptions), default=WINDOW),
                                        retries=False)
        self.workers = [Worker(sub, bootstrap, self.producer, self.http, spool_dir) for sub in subscriptions]

    def start(self, wait_assigned_s: float = 30.0) -> None:
        for worker in self.workers:
            worker.start()
        deadline = time.monotonic() + wait_assigned_s
        for worker in self.workers:
            worker.assigned.wait(max(0.0, deadline - time.monotonic()))

    def drain(self, timeout_s: float = 60.0, topics: Sequence[str] | None = None) -> bool:
        """Wait until every record now in the subscribed topics is handled and committed."""
        deadline = time.monotonic() + timeout_s
        probe = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            targets: list[tuple[str, dict[TopicPartition, int]]] = []
            for worker in self.workers:
                ends: dict[TopicPartition, int] = {}
                for topic in worker.sub.topics:
                    if topics is None or topic in topics:
                        tps = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]
                        ends.update({tp: end for tp, end in probe.end_offsets(tps).items() if end > 0})
                if ends:
                    targets.append((worker.sub.group, ends))
        finally:
            probe.close()
        for group, ends in targets:
            reader = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
            try:
                while not all((reader.committed(tp) or 0) >= end for tp, end in ends.items()):
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.05)
            finally:
                reader.close(autocommit=False)
        return True

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        with suppress(Exception):
            self.producer.close(timeout=5)

