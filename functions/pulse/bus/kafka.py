"""Kafka through kafka-python: the producer ingest uses, topic creation, consumers.

``Producer.send`` returns only after the broker acknowledged the record with
``acks=all`` (``send_many``: several records at once, an answer for each); if
that does not happen within ``ack_timeout_s`` it raises ``Unavailable`` (the
HTTP layer answers 503 with Retry-After). The record may still be stored
later: clients that retry send the same ``event_id`` and the dedup ledger
makes the retry harmless.

Backpressure: at most ``max_in_flight`` records wait for an acknowledgement at
once; one more is refused at once with ``Unavailable`` rather than queued, so
a slow broker costs requests, never unbounded memory (each waiting record
holds its request body).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pulse import telemetry
from pulse.bus.cloudevents import CloudEvent, to_kafka_headers
from pulse.errors import Unavailable
from pulse.settings import MAX_RECORD_BYTES, RECORD_HEADROOM_BYTES  # noqa: F401 - re-exported (dispatcher, dlq)

FAST_GROUP_JOIN = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


class Producer:
    def __init__(self, bootstrap: str, ack_timeout_s: float = 5.0, retry_after_s: int = 2,
                 max_in_flight: int = 64, max_request_bytes: int = MAX_RECORD_BYTES) -> None:
        self.bootstrap = bootstrap
        self.max_request_bytes = max_request_bytes
        self.ack_timeout_s = ack_timeout_s
        self.retry_after_s = retry_after_s
        self.max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self.in_flight = 0  # records waiting for their acknowledgement now
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = KafkaProducer(
                        bootstrap_servers=self.bootstrap,
                        client_id="pulse-ingest",
                        acks="all",
                        linger_ms=1,
                        max_request_size=self.max_request_bytes,
                        max_block_ms=int(self.ack_timeout_s * 1000),
                        request_timeout_ms=30000,
                    )
                except KafkaError as exc:
                    raise Unavailable("kafka is unreachable", self.retry_after_s) from exc
            return self._producer

    def send(self, topic: str, key: str, event: CloudEvent, meanwhile: Callable[[], None] | None = None) -> None:
        """Returns once the broker acknowledged the record. ``meanwhile`` runs
        while the record is on its way (ingest's spool write)."""
        [error] = self.send_many(topic, [(key, event)], meanwhile)
        if error is not None:
            raise error

    def send_many(self, topic: str, records: Sequence[tuple[str, CloudEvent]],
                  meanwhile: Callable[[], None] | None = None) -> list[Unavailable | None]:
        """Send the records (key, event) at once and wait for the broker's answer
        to each, all within ``ack_timeout_s``: per record, None once it was
        acknowledged, or the Unavailable it met (refused, not acknowledged).
        ``meanwhile`` runs while they are on their way; if it raises, that is raised."""
        started = time.perf_counter()
        errors: list[Unavailable | None] = []
        futures: list[Any] = []
        refused = 0
        taken = 0
        try:
            for key, event in records:
                future = None
                if not self._slots.acquire(blocking=False):
                    telemetry.KAFKA_PRODUCE_REFUSED.labels(topic).inc()
                    refused += 1
                    errors.append(Unavailable(f"kafka is slow: {self.max_in_flight} records already wait for it",
                                              self.retry_after_s))
                    futures.append(None)
                    continue
                taken += 1
                with self._lock:
                    self.in_flight += 1
                try:
                    future = self._get().send(
                        topic, key=key.encode(), value=event.data, headers=to_kafka_headers(event))
                    errors.append(None)
                except KafkaError as exc:
                    errors.append(self._not_acknowledged(exc))
                except Unavailable as exc:
                    errors.append(exc)
                futures.append(future)
            if meanwhile is not None:
                meanwhile()
            deadline = started + self.ack_timeout_s
            for index, future in enumerate(futures):
                if future is not None:
                    try:
                        future.get(timeout=max(0.0, deadline - time.perf_counter()))
                    except KafkaError as exc:
                        errors[index] = self._not_acknowledged(exc)
        finally:
            with self._lock:
                self.in_flight -= taken
            for _ in range(taken):
                self._slots.release()
        elapsed = time.perf_counter() - started
        failed = sum(error is not None for error in errors) - refused
        if failed:
            telemetry.KAFKA_PRODUCE_ERRORS.labels(topic).inc(failed)
        for error in errors:
            if error is None:
                telemetry.KAFKA_PRODUCE_LATENCY.labels(topic).observe(elapsed)
        return errors

    def _not_acknowledged(self, exc: KafkaError) -> Unavailable:
        error = Unavailable(f"kafka did not acknowledge the record: {type(exc).__name__}", self.retry_after_s)
        error.__cause__ = exc
        return error

    def ready(self, topic: str) -> bool:
        """The broker answers metadata for ``topic`` (cached once known)."""
        try:
            return bool(self._get().partitions_for(topic))
        except (Unavailable, KafkaError):
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout_s)


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout_s: float = 15.0) -> None:
    """Create the topics that are missing (name → partitions)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pulse-admin",
                                     request_timeout_ms=5000)
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"kafka at {bootstrap} is unreachable: {exc}") from exc
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name, partitions in topics.items() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def consumer(bootstrap: str, group: str, topics: list[str], initial_offset: str = "earliest",
             **overrides: object) -> KafkaConsumer:
    config: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest" if initial_offset == "earliest" else "latest",
        "max_partition_fetch_bytes": MAX_RECORD_BYTES,
        "fetch_max_bytes": 4 * MAX_RECORD_BYTES,
        "max_poll_records": 50,
        **FAST_GROUP_JOIN,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe(topics)
    return consumer


def reachable(bootstrap: str, timeout_s: float = 5.0) -> bool:
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    except KafkaError:
        return False
    admin.close()
    return True
